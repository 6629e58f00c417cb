//! Passwords given on the command line (`--password`, `--masterpassword`, `--slavepassword`,
//! `password=` in a connection string, `user:password@` in a URL) are readable by every local
//! user in `ps` output and /proc/<pid>/cmdline. Once the command line is parsed, replicate
//! overwrites them in place in the process's own argument memory (as the mysql client does), so
//! they are exposed only for the moment between exec and start-up, and warns.

use std::ffi::c_char;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

static ARGC: AtomicI32 = AtomicI32::new(0);
static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

/// glibc passes (argc, argv, envp) to the functions of `.init_array`: the very memory the
/// kernel shows in /proc/<pid>/cmdline.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static CAPTURE_ARGV: extern "C" fn(i32, *mut *mut c_char, *mut *mut c_char) = capture_argv;

extern "C" fn capture_argv(argc: i32, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
    ARGC.store(argc, Ordering::Relaxed);
    ARGV.store(argv, Ordering::Relaxed);
}

/// Flags whose value is a password.
const PASSWORD_FLAGS: &[&str] = &["--password", "--masterpassword", "--slavepassword"];

/// Byte ranges of `arg` that are passwords: the value of a password flag given as
/// `--flag=value`, of `password=` in a key=value connection string (quoted or not), and of the
/// password in a `postgres://user:password@host` URL (and its `?password=` parameter).
#[allow(clippy::single_range_in_vec_init)]
pub fn secret_ranges(arg: &[u8], previous: Option<&[u8]>) -> Vec<std::ops::Range<usize>> {
    if previous.is_some_and(|p| PASSWORD_FLAGS.iter().any(|f| p == f.as_bytes())) {
        return vec![0..arg.len()];
    }
    for f in PASSWORD_FLAGS {
        let flag = format!("{f}=");
        if arg.starts_with(flag.as_bytes()) {
            return vec![flag.len()..arg.len()];
        }
    }
    let mut out = Vec::new();
    // URL: scheme://user:secret@host
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = arg.strip_prefix(scheme.as_bytes()) {
            let start = scheme.len();
            let authority_end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            if let Some(at) = rest[..authority_end].iter().rposition(|&b| b == b'@') {
                if let Some(colon) = rest[..at].iter().position(|&b| b == b':') {
                    out.push(start + colon + 1..start + at);
                }
            }
        }
    }
    // key=value (also a URL's ?password= / &password=)
    let mut i = 0;
    while let Some(pos) = find(&arg[i..], b"password") {
        let key_start = i + pos;
        let mut j = key_start + b"password".len();
        let boundary =
            key_start == 0 || matches!(arg[key_start - 1], b' ' | b'\t' | b'?' | b'&' | b'\n');
        while j < arg.len() && (arg[j] == b' ' || arg[j] == b'\t') {
            j += 1;
        }
        if !boundary || j >= arg.len() || arg[j] != b'=' {
            i = key_start + 1;
            continue;
        }
        j += 1;
        while j < arg.len() && (arg[j] == b' ' || arg[j] == b'\t') {
            j += 1;
        }
        let value_start = j;
        if j < arg.len() && arg[j] == b'\'' {
            j += 1;
            while j < arg.len() && arg[j] != b'\'' {
                j += if arg[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(arg.len());
        } else {
            while j < arg.len() && !matches!(arg[j], b' ' | b'\t' | b'&' | b'\n') {
                j += 1;
            }
        }
        if j > value_start {
            out.push(value_start..j);
        }
        i = j.max(key_start + 1);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Overwrite every password in this process's argument memory with `x`; returns how many
/// connection strings or URLs held one (the password flags warn on their own). Call after the
/// command line was parsed (std's own copy of the arguments is read afresh from the same
/// memory).
pub fn hide_passwords() -> usize {
    let argc = ARGC.load(Ordering::Relaxed);
    let argv = ARGV.load(Ordering::Relaxed);
    if argv.is_null() {
        return 0;
    }
    let mut hidden = 0;
    let mut previous: Option<Vec<u8>> = None;
    for i in 1..argc.max(0) as usize {
        // SAFETY: argv has argc valid, NUL-terminated, writable entries for the process's life
        let p = unsafe { *argv.add(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: as above
        let len = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes().len();
        // SAFETY: the argument's own bytes, excluding its NUL
        let bytes = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
        let ranges = secret_ranges(bytes, previous.as_deref());
        let flag = previous
            .as_deref()
            .is_some_and(|p| PASSWORD_FLAGS.iter().any(|f| p == f.as_bytes()))
            || PASSWORD_FLAGS
                .iter()
                .any(|f| bytes.starts_with(format!("{f}=").as_bytes()));
        previous = Some(bytes.to_vec());
        if ranges.is_empty() {
            continue;
        }
        if !flag {
            hidden += 1;
        }
        for r in ranges {
            bytes[r].fill(b'x');
        }
    }
    hidden
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(arg: &str, previous: Option<&str>) -> String {
        let mut b = arg.as_bytes().to_vec();
        for r in secret_ranges(&b.clone(), previous.map(str::as_bytes)) {
            b[r].fill(b'x');
        }
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn passwords_are_found_in_every_form() {
        assert_eq!(masked("--password=s3cret", None), "--password=xxxxxx");
        assert_eq!(masked("s3cret", Some("--masterpassword")), "xxxxxx");
        assert_eq!(
            masked("host=db password=s3cret user=u", None),
            "host=db password=xxxxxx user=u"
        );
        assert_eq!(
            masked("host=db password = 'a s3cret' dbname=x", None),
            "host=db password = xxxxxxxxxx dbname=x"
        );
        assert_eq!(
            masked("password='a\\'b' host=x", None),
            "password=xxxxxx host=x"
        );
        assert_eq!(
            masked("postgresql://u:s3cret@db:5432/app", None),
            "postgresql://u:xxxxxx@db:5432/app"
        );
        assert_eq!(
            masked(
                "postgres://db/app?user=u&password=s3cret&sslmode=require",
                None
            ),
            "postgres://db/app?user=u&password=xxxxxx&sslmode=require"
        );
        // no password: untouched
        assert_eq!(
            masked("host=db passwordfile=x", None),
            "host=db passwordfile=x"
        );
        assert_eq!(
            masked("postgresql://u@db/app", None),
            "postgresql://u@db/app"
        );
        assert_eq!(masked("app", Some("--user")), "app");
    }
}
