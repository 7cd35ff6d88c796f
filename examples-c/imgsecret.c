/*
 * imgsecret - encrypted images through libimgtool's secrets.
 *
 *   imgsecret read PASSWORD IMAGE RAWOUT     decrypt IMAGE's guest data
 *   imgsecret convert PASSWORD SRC DST       SRC -> a new LUKS qcow2 DST
 *   imgsecret write PASSWORD IMAGE OFFSET    write 64 KiB of 0x5a
 *   imgsecret nosecret IMAGE                 reading without a secret fails
 *
 * Defines the secret "sec0" with imgtool_secret_set and names it in the
 * options structs' key_secret fields, as qemu-img's
 * `--object secret,id=sec0,data=PASSWORD` with `encrypt.key-secret=sec0`.
 * `read` first opens with an imgtool_open_options whose struct_size ends
 * before key_secret (an older caller: the secret it set beyond the struct
 * is not seen, so opening fails), then with the full struct. Exits 0 on success, 1 on failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <imgtool.h>

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed(const char *what, int rc)
{
    fprintf(stderr, "imgsecret: %s: %s [%s]\n", what, imgtool_last_error(), imgtool_strerror(rc));
    return 1;
}

static int set_secret(const char *password)
{
    int rc = imgtool_secret_set("sec0", password, strlen(password));
    return rc == IMGTOOL_OK ? 0 : failed("imgtool_secret_set", rc);
}

/* Open with an options struct from a header that had no key_secret: the
 * field beyond struct_size must not be read, so the image cannot be
 * unlocked (qemu-img's "Parameter 'encrypt.key-secret' is required"). */
static int old_caller_cannot_decrypt(const char *path)
{
    imgtool_open_options o;
    imgtool_image *img = NULL;
    if (imgtool_open_options_init(&o) != IMGTOOL_OK)
        return 1;
    o.struct_size = offsetof(imgtool_open_options, key_secret);
    o.key_secret = "sec0"; /* beyond struct_size: must be ignored */
    int rc = imgtool_open(path, &o, &img);
    if (rc == IMGTOOL_OK) {
        imgtool_close(img);
        fprintf(stderr, "imgsecret: opened without key_secret\n");
        return 1;
    }
    if (!strstr(imgtool_last_error(), "encrypt.key-secret")) {
        fprintf(stderr, "imgsecret: unexpected error: %s\n", imgtool_last_error());
        return 1;
    }
    return 0;
}

static int do_read(const char *path, const char *out)
{
    imgtool_open_options o;
    imgtool_image *img = NULL;
    if (old_caller_cannot_decrypt(path))
        return 1;
    if (imgtool_open_options_init(&o) != IMGTOOL_OK)
        return 1;
    o.key_secret = "sec0";
    int rc = imgtool_open(path, &o, &img);
    if (rc != IMGTOOL_OK)
        return failed("imgtool_open", rc);
    uint64_t size = 0;
    rc = imgtool_get_size(img, &size);
    if (rc != IMGTOOL_OK)
        return failed("imgtool_get_size", rc);
    FILE *f = fopen(out, "wb");
    if (!f) {
        perror(out);
        return 1;
    }
    static uint8_t buf[1 << 20];
    for (uint64_t off = 0; off < size;) {
        size_t n = size - off < sizeof buf ? (size_t)(size - off) : sizeof buf;
        rc = imgtool_read(img, buf, n, off);
        if (rc != IMGTOOL_OK) {
            fclose(f);
            return failed("imgtool_read", rc);
        }
        if (fwrite(buf, 1, n, f) != n) {
            perror(out);
            fclose(f);
            return 1;
        }
        off += n;
    }
    imgtool_close(img);
    return fclose(f) == 0 ? 0 : 1;
}

static int do_write(const char *path, uint64_t off)
{
    imgtool_open_options o;
    imgtool_image *img = NULL;
    static uint8_t buf[65536];
    memset(buf, 0x5a, sizeof buf);
    if (imgtool_open_options_init(&o) != IMGTOOL_OK)
        return 1;
    o.flags = IMGTOOL_OPEN_WRITABLE;
    o.key_secret = "sec0";
    int rc = imgtool_open(path, &o, &img);
    if (rc != IMGTOOL_OK)
        return failed("imgtool_open", rc);
    rc = imgtool_write(img, buf, sizeof buf, off);
    if (rc != IMGTOOL_OK)
        return failed("imgtool_write", rc);
    rc = imgtool_close(img);
    return rc == IMGTOOL_OK ? 0 : failed("imgtool_close", rc);
}

static int do_convert(const char *src, const char *dst)
{
    imgtool_convert_options o;
    if (imgtool_convert_options_init(&o) != IMGTOOL_OK)
        return 1;
    o.out_format = "qcow2";
    o.options = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
    o.source_key_secret = "sec0";
    int rc = imgtool_convert(&src, 1, dst, &o, NULL, NULL);
    return rc == IMGTOOL_OK ? 0 : failed("imgtool_convert", rc);
}

static int do_nosecret(const char *path)
{
    imgtool_open_options o;
    imgtool_image *img = NULL;
    uint8_t b[512];
    if (imgtool_open_options_init(&o) != IMGTOOL_OK)
        return 1;
    o.key_secret = "no-such-secret";
    int rc = imgtool_open(path, &o, &img);
    if (rc == IMGTOOL_OK) {
        rc = imgtool_read(img, b, sizeof b, 0);
        imgtool_close(img);
        if (rc == IMGTOOL_OK) {
            fprintf(stderr, "imgsecret: an unknown secret id decrypted the image\n");
            return 1;
        }
    }
    printf("%s\n", imgtool_last_error());
    if (imgtool_secret_remove("sec0") != IMGTOOL_ENOENT) {
        fprintf(stderr, "imgsecret: removing an undefined secret did not fail\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "read") == 0)
        return set_secret(argv[2]) || do_read(argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "convert") == 0)
        return set_secret(argv[2]) || do_convert(argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "write") == 0)
        return set_secret(argv[2]) || do_write(argv[3], strtoull(argv[4], NULL, 0));
    if (argc == 3 && strcmp(argv[1], "nosecret") == 0)
        return do_nosecret(argv[2]);
    fprintf(stderr, "usage: imgsecret read|convert|write PASSWORD ARGS... | nosecret IMAGE\n");
    return 1;
}
