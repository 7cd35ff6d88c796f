// The header must compile as C++ too (extern "C" linkage, no C-only syntax).
#include <imgtool.h>

int main()
{
    imgtool_open_options o;
    imgtool_image *img = nullptr;
    if (imgtool_open_options_init(&o) != IMGTOOL_OK)
        return 1;
    int rc = imgtool_open("/nonexistent", &o, &img);
    return rc == IMGTOOL_ENOENT && img == nullptr ? 0 : 1;
}
