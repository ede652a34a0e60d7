# The git commit `tokenmill --version` reports, found when CMake configures (not at every
# build: a commit made since the last configure shows after the next one). Without a
# .git (a source tarball, an exported tree) it is "unknown" unless given:
#   cmake -DTOKENMILL_GIT_COMMIT=<sha> ...
set(TOKENMILL_GIT_COMMIT "" CACHE STRING "Git commit reported by --version (empty: ask git)")
set(_tokenmill_commit "${TOKENMILL_GIT_COMMIT}")
if(_tokenmill_commit STREQUAL "")
  set(_tokenmill_commit "unknown")
  find_package(Git QUIET)
  if(GIT_FOUND)
    execute_process(COMMAND "${GIT_EXECUTABLE}" -C "${PROJECT_SOURCE_DIR}" rev-parse --short=12 HEAD
      OUTPUT_VARIABLE _out RESULT_VARIABLE _rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    # A tree that is not a checkout, or sits inside an unrelated one, must not borrow that
    # repository's commit: only a checkout whose top level is this source folder counts.
    execute_process(COMMAND "${GIT_EXECUTABLE}" -C "${PROJECT_SOURCE_DIR}" rev-parse --show-toplevel
      OUTPUT_VARIABLE _top RESULT_VARIABLE _rc2 ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(_rc EQUAL 0 AND _rc2 EQUAL 0 AND NOT _out STREQUAL "")
      file(REAL_PATH "${_top}" _top_real)
      file(REAL_PATH "${PROJECT_SOURCE_DIR}" _src_real)
      if(_top_real STREQUAL _src_real)
        set(_tokenmill_commit "${_out}")
      endif()
    endif()
  endif()
endif()
message(STATUS "tokenmill: version ${PROJECT_VERSION}, commit ${_tokenmill_commit}")
set(TOKENMILL_COMMIT "${_tokenmill_commit}")
