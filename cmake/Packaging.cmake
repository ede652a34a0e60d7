# The Debian package: `cpack -G DEB` in the build folder (or scripts/package.sh) writes
# tokenmill_<version>_amd64.deb from what `cmake --install` installs, under /usr. Its
# Depends come from dpkg-shlibdeps: the Debian 12 packages that hold the shared libraries
# the executable links (CAF, UCX, Cap'n Proto, yaml-cpp, fmt, spdlog, ...), so
# `apt install ./tokenmill_*.deb` pulls them. Needs dpkg-dev (build-essential has it).
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "tokenmill")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_CONTACT "tokenmill maintainers <tokenmill@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
  "LLM serving with prefill and decode disaggregated across actors and nodes")
set(CPACK_PACKAGE_DESCRIPTION
  "tokenmill serves large language models with prefill and decode on different workers, \
moving the KV cache between them over UCX. The package holds the tokenmill executable, \
example manifests and job scripts, the documentation, and a systemd unit template \
(tokenmill-node@.service) that runs one node of a host manifest per instance.")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME "DEB-DEFAULT")
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# Only what the install rules name goes in (no tests, no benchmarks, no static libraries).
set(CPACK_DEB_COMPONENT_INSTALL OFF)
set(CPACK_SOURCE_IGNORE_FILES "/build.*/;/\\\\.git/")
include(CPack)
