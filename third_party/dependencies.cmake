# Finds moectl's external dependencies, all from Debian packages (third_party/install_deps.sh
# installs them). No third-party source is copied into the tree.
find_package(PkgConfig REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(fmt CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(ZLIB REQUIRED)  # crc32 for the zip entries of torch checkpoints
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
pkg_check_modules(SENTENCEPIECE IMPORTED_TARGET sentencepiece)

# OpenBLAS: the pthreads build is what Debian's libopenblas-dev selects; we link it directly
# so that cblas_sgemm is OpenBLAS and not the reference BLAS.
find_library(OPENBLAS_LIB NAMES openblas REQUIRED)
find_path(OPENBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas REQUIRED)
add_library(moe_openblas INTERFACE)
target_link_libraries(moe_openblas INTERFACE ${OPENBLAS_LIB})
target_include_directories(moe_openblas INTERFACE ${OPENBLAS_INCLUDE})

# MPI (launcher and CPU collectives).
set(MOE_HAVE_MPI OFF)
if(NOT MOE_MPI STREQUAL "OFF")
  find_package(MPI COMPONENTS CXX)
  if(MPI_CXX_FOUND)
    set(MOE_HAVE_MPI ON)
  elseif(MOE_MPI STREQUAL "ON")
    message(FATAL_ERROR "MOE_MPI=ON but MPI was not found (apt install libopenmpi-dev)")
  endif()
endif()

# CUDA: AUTO builds the backend when nvcc is found (default location /usr/local/cuda). NCCL (the
# GPU collectives) is used when found beside it; MOE_HAVE_NCCL and the moe_nccl target say so.
set(MOE_HAVE_CUDA OFF)
set(MOE_HAVE_NCCL OFF)
if(NOT MOE_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # A100 and H100 by default (set before enable_language, which would take nvcc's own default);
    # -DMOE_CUDA_ARCHS=... (or CMAKE_CUDA_ARCHITECTURES) to choose others.
    set(MOE_CUDA_ARCHS "80;90" CACHE STRING "CUDA architectures the backend is built for")
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES ${MOE_CUDA_ARCHS})
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit)
    if(CUDAToolkit_FOUND)
      set(MOE_HAVE_CUDA ON)
      find_library(NCCL_LIB nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
      find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include /usr/include)
      if(NCCL_LIB AND NCCL_INCLUDE_DIR)
        set(MOE_HAVE_NCCL ON)
        add_library(moe_nccl INTERFACE)
        target_include_directories(moe_nccl SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
        target_link_libraries(moe_nccl INTERFACE ${NCCL_LIB} CUDA::cudart)
      endif()
    endif()
  endif()
  if(NOT MOE_HAVE_CUDA AND MOE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MOE_CUDA=ON but nvcc/CUDA toolkit not found under /usr/local/cuda")
  endif()
endif()
message(STATUS "moectl: CUDA backend ${MOE_HAVE_CUDA}, NCCL ${MOE_HAVE_NCCL}, MPI ${MOE_HAVE_MPI}")
