//! `amend`: change format options of an existing image (`-o`), with
//! qemu-img's option validation.

use crate::error::{Error, Result};
use crate::format::{self, BackingRead, CreateOptions, NoBacking, OptDesc};
use crate::image::Image;

/// Options `amend` accepts for `format`; an error names a format that
/// cannot amend (or an unknown one) as qemu-img does.
pub fn options(format: &str) -> Result<&'static [OptDesc]> {
    format::amend_options(format)?.ok_or_else(|| {
        Error::unsupported(format!(
            "Format driver '{format}' does not support option amendment"
        ))
    })
}

/// Check `opts` against the amend options of `format`. An option only
/// creation knows gets qemu-img's hint.
pub fn validate(format: &str, opts: &CreateOptions) -> Result<()> {
    let amend = options(format)?;
    let Err(e) = opts.validate(amend) else {
        return Ok(());
    };
    // QEMU retries with the format's own creation options; those of the
    // protocol layer (listed with ours for `create -o help`) do not count.
    const PROTOCOL: &[&str] = &["nocow", "extent_size_hint"];
    let mut all: Vec<OptDesc> = amend.to_vec();
    all.extend(
        format::create_options(format)?
            .iter()
            .filter(|d| !PROTOCOL.contains(&d.name)),
    );
    if opts.validate(&all).is_ok() {
        let m = format!(
            "{}\nThis option is only supported for image creation",
            e.message()
        );
        return Err(e.with_message(m));
    }
    Err(e)
}

/// `qemu-img amend -o OPTS`. The image must be closed (and reopened)
/// before further use; `progress` gets percentages.
pub fn amend(
    img: Image,
    opts: &CreateOptions,
    progress: Option<&mut dyn FnMut(f64)>,
) -> Result<()> {
    amend_with(img, opts, false, progress)
}

/// [`amend`] with qemu-img's `--force`, which lets key slot changes go
/// ahead that QEMU otherwise refuses (overwriting an active slot, erasing
/// the last one).
pub fn amend_with(
    img: Image,
    opts: &CreateOptions,
    force: bool,
    progress: Option<&mut dyn FnMut(f64)>,
) -> Result<()> {
    validate(img.format(), opts)?;
    let (backing, backing_size): (&dyn BackingRead, Option<u64>) = match img.backing() {
        Some(b) => (b, Some(b.size())),
        None => (&NoBacking, None),
    };
    let mut none = |_: f64| {};
    let cb: &mut dyn FnMut(f64) = match progress {
        Some(p) => p,
        None => &mut none,
    };
    img.driver().amend(opts, backing, backing_size, force, cb)?;
    img.close()
}
