# Installation (cmake --install) and the Debian package (cpack -G DEB), included from the root
# CMakeLists.txt. docs/install.md says how to use them.
#
#   cmake --install build [--prefix /usr/local]     # bin/lookalike, docs, man page, the unit
#   (cd build && cpack -G DEB)                      # build/lookalike_<version>-1_<arch>.deb
include(GNUInstallDirs)

# The binary: cli/CMakeLists.txt has install(TARGETS lookalike), to ${CMAKE_INSTALL_BINDIR}.

# Documentation and the man page. The web page is inside the binary.
file(GLOB LOOKALIKE_DOC_PAGES CONFIGURE_DEPENDS ${LOOKALIKE_ROOT}/docs/*.md)
install(FILES ${LOOKALIKE_ROOT}/README.md ${LOOKALIKE_DOC_PAGES}
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${LOOKALIKE_ROOT}/docs/man/lookalike.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)

# The systemd unit and its /etc/default/lookalike. Where they go is decided at install time,
# from the prefix that install runs with (cpack installs with /usr, while the build folder's own
# prefix is usually /usr/local):
#   prefix /usr (the .deb):  /lib/systemd/system/lookalike.service, /etc/default/lookalike
#   any other prefix P:      P/lib/systemd/system/..., P/etc/default/lookalike, and the unit's
#                            /usr/bin/lookalike and /etc/default/lookalike say P's paths
# (systemd also reads /usr/local/lib/systemd/system). The .deb's postinst creates the user;
# from source, create it yourself (docs/install.md).
option(LOOKALIKE_INSTALL_SERVICE "Install the systemd unit and /etc/default/lookalike" ON)
if(LOOKALIKE_INSTALL_SERVICE)
  install(CODE "set(LOOKALIKE_PACKAGING_SRC \"${LOOKALIKE_ROOT}/packaging\")
                set(LOOKALIKE_PACKAGING_BIN \"${CMAKE_BINARY_DIR}/packaging\")")
  install(CODE [[
    if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
      set(_lookalike_unitdir "/lib/systemd/system")
      set(_lookalike_etc "/etc")
    else()
      set(_lookalike_unitdir "${CMAKE_INSTALL_PREFIX}/lib/systemd/system")
      set(_lookalike_etc "${CMAKE_INSTALL_PREFIX}/etc")
    endif()
    file(READ "${LOOKALIKE_PACKAGING_SRC}/lookalike.service" _lookalike_unit)
    string(REPLACE "/usr/bin/lookalike" "${CMAKE_INSTALL_PREFIX}/bin/lookalike"
           _lookalike_unit "${_lookalike_unit}")
    string(REPLACE "/etc/default/lookalike" "${_lookalike_etc}/default/lookalike"
           _lookalike_unit "${_lookalike_unit}")
    file(WRITE "${LOOKALIKE_PACKAGING_BIN}/unit/lookalike.service" "${_lookalike_unit}")
    file(INSTALL DESTINATION "${_lookalike_unitdir}" TYPE FILE
         FILES "${LOOKALIKE_PACKAGING_BIN}/unit/lookalike.service")
    # Holds the API key: readable by root only (systemd reads it before dropping privileges).
    file(INSTALL DESTINATION "${_lookalike_etc}/default" TYPE FILE
         FILES "${LOOKALIKE_PACKAGING_SRC}/default" RENAME lookalike
         PERMISSIONS OWNER_READ OWNER_WRITE)
  ]])
endif()

# The .deb.
set(LOOKALIKE_DEB_MAINTAINER "lookalike maintainers <maintainers@users.noreply.b-seed-8c0b2a81.example>"
    CACHE STRING "Maintainer field of the .deb")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME lookalike)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${LOOKALIKE_DEB_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "self-hosted image similarity search engine")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)

set(CPACK_DEBIAN_PACKAGE_NAME lookalike)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # lookalike_0.1.0-1_amd64.deb
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${LOOKALIKE_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION graphics)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# The first line of the control's Description is CPACK_PACKAGE_DESCRIPTION_SUMMARY.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "Indexes folders of photos or a product catalogue (CSV with metadata) with an
ImageNet-pretrained network (LibTorch) and finds the images most like a query
photo, with cosine-similarity scores: a FAISS index over a SQLite catalog.
One binary, lookalike, with commands to index, search, embed and remove, and
`lookalike serve`: an HTTP JSON API and a web page, run by lookalike.service
as the system user lookalike, with its collection and models in
/var/lib/lookalike. Models are exported with tools/export_model.py from the
source tree (see /usr/share/doc/lookalike/install.md).")
# Depends: computed by dpkg-shlibdeps from the libraries the binary links (LibTorch, FAISS,
# libvips, SQLite, ...); adduser for the maintainer scripts.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
# libblas.so.3 must be OpenBLAS (Debian's reference BLAS is ~40x slower, scripts/install-deps.sh).
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libopenblas0-openmp")
# Exporting models (tools/export_model.py) needs PyTorch and torchvision.
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "python3-torch, python3-torchvision")

# Maintainer scripts and the conffile list.
file(WRITE ${CMAKE_BINARY_DIR}/packaging/conffiles "/etc/default/lookalike\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${LOOKALIKE_ROOT}/packaging/debian/postinst
    ${LOOKALIKE_ROOT}/packaging/debian/prerm
    ${LOOKALIKE_ROOT}/packaging/debian/postrm
    ${CMAKE_BINARY_DIR}/packaging/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

include(CPack)
