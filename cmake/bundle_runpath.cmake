# Install step of the relocatable bundle (apps/moectl/CMakeLists.txt): gives every library in
# PREFIX/lib the runpath $ORIGIN. Debian's libmpi and libopen-rte carry a runpath into
# /usr/lib/x86_64-linux-gnu/openmpi/lib and OpenBLAS none, so without this their own
# dependencies (libopen-pal, libhwloc, libgfortran, ...) would be looked up outside the bundle:
# a runpath applies only to the object that carries it.
set(lib_dir "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}/lib")
find_program(PATCHELF patchelf)
if(NOT PATCHELF)
  message(FATAL_ERROR "bundle: patchelf not found; apt install patchelf (third_party/install_deps.sh does)")
endif()
file(GLOB libs LIST_DIRECTORIES false "${lib_dir}/*.so*")
foreach(lib IN LISTS libs)
  if(IS_SYMLINK "${lib}")
    continue()
  endif()
  execute_process(COMMAND ${PATCHELF} --print-rpath "${lib}" OUTPUT_VARIABLE rpath
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "bundle: patchelf cannot read ${lib}")
  endif()
  if(NOT rpath STREQUAL "$ORIGIN")
    execute_process(COMMAND ${PATCHELF} --set-rpath "$ORIGIN" "${lib}" RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "bundle: patchelf cannot set the runpath of ${lib}")
    endif()
  endif()
endforeach()
