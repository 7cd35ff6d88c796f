# Install libimgtool for C programs (the cargo-c layout):
#
#   make install [PREFIX=/usr/local] [DESTDIR=] [LIBDIR=$(PREFIX)/lib]
#   make uninstall (same variables)
#
# installs $(LIBDIR)/libimgtool.so.$(VERSION) with the libimgtool.so.$(MAJOR)
# (soname) and libimgtool.so symlinks, libimgtool.a, $(INCLUDEDIR)/imgtool.h
# and $(PKGCONFIGDIR)/imgtool.pc, after `cargo build --release`. Then
#   cc prog.c $(pkg-config --cflags --libs imgtool)
# builds a program against it.

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=
CARGO ?= cargo
CARGOFLAGS ?=
INSTALL ?= install

# First `version = "..."` in Cargo.toml is [workspace.package].version.
VERSION := $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
MAJOR := $(firstword $(subst ., ,$(VERSION)))
# Where cargo puts artefacts (honours CARGO_TARGET_DIR and .cargo/config).
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null \
	| sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
ifeq ($(TARGET_DIR),)
TARGET_DIR := target
endif
RELEASE_DIR := $(TARGET_DIR)/release
# System libraries a static link of libimgtool.a needs (rustc
# --print native-static-libs on Linux/glibc).
LIBS_PRIVATE ?= -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
# In imgtool.pc, paths under PREFIX are written relative to ${prefix}, so
# `pkg-config --define-prefix` can relocate an installed tree.
PC_LIBDIR := $(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))
PC_INCLUDEDIR := $(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))

.PHONY: all build install uninstall

all: build

build:
	$(CARGO) build --release --lib -p imgtool $(CARGOFLAGS)

install: build
	$(INSTALL) -d "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(INCLUDEDIR)" "$(DESTDIR)$(PKGCONFIGDIR)"
	$(INSTALL) -m 755 "$(RELEASE_DIR)/libimgtool.so" "$(DESTDIR)$(LIBDIR)/libimgtool.so.$(VERSION)"
	ln -sfn "libimgtool.so.$(VERSION)" "$(DESTDIR)$(LIBDIR)/libimgtool.so.$(MAJOR)"
	ln -sfn "libimgtool.so.$(MAJOR)" "$(DESTDIR)$(LIBDIR)/libimgtool.so"
	$(INSTALL) -m 644 "$(RELEASE_DIR)/libimgtool.a" "$(DESTDIR)$(LIBDIR)/libimgtool.a"
	$(INSTALL) -m 644 include/imgtool.h "$(DESTDIR)$(INCLUDEDIR)/imgtool.h"
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(PC_LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(PC_INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS_PRIVATE@|$(LIBS_PRIVATE)|g' \
	    pkgconfig/imgtool.pc.in > "$(DESTDIR)$(PKGCONFIGDIR)/imgtool.pc"
	chmod 644 "$(DESTDIR)$(PKGCONFIGDIR)/imgtool.pc"

uninstall:
	rm -f "$(DESTDIR)$(LIBDIR)/libimgtool.so.$(VERSION)" \
	      "$(DESTDIR)$(LIBDIR)/libimgtool.so.$(MAJOR)" \
	      "$(DESTDIR)$(LIBDIR)/libimgtool.so" \
	      "$(DESTDIR)$(LIBDIR)/libimgtool.a" \
	      "$(DESTDIR)$(INCLUDEDIR)/imgtool.h" \
	      "$(DESTDIR)$(PKGCONFIGDIR)/imgtool.pc"
