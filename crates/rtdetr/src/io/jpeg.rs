//! JPEG decoding with libjpeg-turbo (through mozjpeg, whose decoder is libjpeg-turbo's), as
//! Pillow decodes, for identical pixels. libjpeg reports through an error manager: this one
//! turns fatal errors and the warnings that mean lost data (a truncated file, a scan cut
//! short by a marker) into errors where libjpeg would pad with grey, counts scans, and stops
//! when asked to (a cancel flag, checked at every scan).

use std::cell::RefCell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image::RgbImage;
use mozjpeg_sys as ffi;

use crate::error::{Error, Result};

/// Why the error manager stopped a decode (the unwinding payload).
enum Stop {
    Fatal(c_int),
    Truncated,
    TooManyScans(u32),
    Cancelled,
}

/// The decode running on this thread: libjpeg calls the error manager back on the thread
/// that called it, so its state lives here rather than in the C struct.
struct Watch {
    max_scans: u32,
    scans: u32,
    cancel: Option<Arc<AtomicBool>>,
}

thread_local! {
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

fn stop(reason: Stop) -> ! {
    // Unwinds through libjpeg back to `catch_unwind` in `decode`, as mozjpeg's own error
    // manager does (its callbacks are declared "C-unwind"); `resume_unwind` skips the panic
    // hook, so nothing is printed.
    std::panic::resume_unwind(Box::new(reason))
}

fn message_code(cinfo: &ffi::jpeg_common_struct) -> c_int {
    // SAFETY: `err` points at the error manager set up in `decode`, which the `Decompress`
    // owns (boxed) for as long as libjpeg can call back; libjpeg never leaves it null.
    unsafe { cinfo.err.as_ref() }.map_or(0, |e| e.msg_code)
}

extern "C-unwind" fn on_error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    stop(Stop::Fatal(message_code(cinfo)))
}

extern "C-unwind" fn on_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    let code = message_code(cinfo);
    if level < 0 {
        // Warnings. These two mean the data ended (or a marker interrupted a scan) before
        // the image did: libjpeg would fill the rest with grey.
        if code == ffi::JWRN_JPEG_EOF || code == ffi::JWRN_HIT_MARKER {
            stop(Stop::Truncated);
        }
        return;
    }
    if code != ffi::JTRC_SOS {
        return;
    }
    let verdict = WATCH.with(|w| {
        let mut w = w.borrow_mut();
        let w = w.as_mut()?;
        w.scans += 1;
        if w.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            Some(Stop::Cancelled)
        } else if w.scans > w.max_scans {
            Some(Stop::TooManyScans(w.max_scans))
        } else {
            None
        }
    });
    if let Some(reason) = verdict {
        stop(reason)
    }
}

/// Clears the thread's watch when the decode ends, however it ends.
struct WatchGuard;

impl Drop for WatchGuard {
    fn drop(&mut self) {
        WATCH.with(|w| w.borrow_mut().take());
    }
}

/// Decodes to RGB with at most `max_scans` scans. `Ok(None)` when libjpeg cannot produce
/// RGB (CMYK, YCCK): the caller falls back to another decoder.
pub(crate) fn decode(bytes: &[u8], max_scans: u32, cancel: Option<Arc<AtomicBool>>) -> Result<Option<RgbImage>> {
    if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
        return Err(Error::Image("the decode was cancelled".into()));
    }
    // A file cut short has no end-of-image marker near its end.
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(Error::Image("truncated JPEG (no end-of-image marker)".into()));
    }
    // SAFETY: an all-zero `jpeg_error_mgr` is valid (null function pointers and tables);
    // `jpeg_std_error` then fills every field, as libjpeg requires before use.
    let mut err: ffi::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: `err` is a valid, exclusively borrowed error manager.
    unsafe { ffi::jpeg_std_error(&mut err) };
    err.error_exit = Some(on_error_exit);
    err.emit_message = Some(on_message);
    WATCH.with(|w| *w.borrow_mut() = Some(Watch { max_scans, scans: 0, cancel }));
    let _guard = WatchGuard;
    let result = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let d = mozjpeg::decompress::DecompressBuilder::new().with_err(err).from_mem(bytes)?;
        if matches!(d.color_space(), mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        let mut started = d.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        Ok(RgbImage::from_raw(w, h, pixels))
    });
    match result {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(Error::Image(format!("cannot decode JPEG: {e}"))),
        Err(payload) => Err(Error::Image(match payload.downcast::<Stop>().map(|b| *b) {
            Ok(Stop::Truncated) => "truncated or corrupt JPEG: the data ends before the image does".into(),
            Ok(Stop::TooManyScans(max)) => format!("the JPEG has more than {max} scans"),
            Ok(Stop::Cancelled) => "the decode was cancelled".into(),
            Ok(Stop::Fatal(code)) => format!("cannot decode JPEG: corrupt data (libjpeg message {code})"),
            Err(_) => "cannot decode JPEG: corrupt data".into(),
        })),
    }
}
