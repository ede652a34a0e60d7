#pragma once
/// What `tokenmill --version` prints: the project version and the git commit it was built
/// from, both fixed when CMake configured the build (cmake/Version.cmake).

namespace tokenmill::app {

/// The project version, e.g. "0.1.0" (CMakeLists.txt's project()).
const char* version();
/// The 12-digit abbreviated commit hash, or "unknown" when the source was not a git
/// checkout and none was given with -DTOKENMILL_GIT_COMMIT.
const char* git_commit();

}  // namespace tokenmill::app
