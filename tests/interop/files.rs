//! XEP-0454 files against an independent AES-GCM, Python's `cryptography` (OpenSSL, through
//! `tests/interop/aesgcm.py`): it decrypts what omemod encrypts and encrypts what omemod
//! decrypts — empty, one-byte and 64 KiB files and files around the chunk size, with 12- and
//! 16-byte IVs, one of them a 16-byte IV whose counter wraps in its low 32 bits. The ignored
//! `a_100_mib_file_*` test passes 100 MiB both ways and measures the daemon's memory meanwhile
//! (`cargo test -p omemod --release --test interop -- --ignored files`).

use super::support::{peak_while, python, repo, rss_kib, Daemon};
use omemod_client::blocking::Client;
use omemod_client::files::{FileKey, Progress};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The daemon's default chunk.
const CHUNK: usize = 256 * 1024;
/// Plaintext lengths: the Done-when sizes, and around a chunk of plaintext and of download.
const SIZES: &[usize] = &[
    0,
    1,
    64 * 1024,
    CHUNK - 16,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    600_000,
];

/// `len` bytes that differ from file to file.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// aesgcm.py: whether it succeeded.
fn python_aesgcm(mode: &str, fragment: &str, input: &Path, output: &Path) -> bool {
    let out = Command::new(python())
        .arg(repo().join("tests/interop/aesgcm.py"))
        .args([mode, fragment])
        .args([input, output])
        .output()
        .expect("run aesgcm.py");
    if !out.status.success() {
        eprintln!("aesgcm.py {mode}: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

fn no_progress() -> impl FnMut(Progress) {
    |_| {}
}

/// omemod encrypts `input` into `output`; the fragment.
fn omemod_encrypt(c: &Client, input: &Path, output: &Path) -> String {
    let size = std::fs::metadata(input).expect("input").len();
    let mut r = std::io::BufReader::new(std::fs::File::open(input).expect("open"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(output).expect("create"));
    let sent = c
        .encrypt_file(&mut r, size, &mut w, None, &mut no_progress())
        .expect("omemod encrypts");
    assert_eq!(sent.upload_size, size + 16);
    sent.fragment
}

/// omemod decrypts `input` into `output` with `key`.
fn omemod_decrypt(
    c: &Client,
    key: FileKey<'_>,
    input: &Path,
    output: &Path,
) -> Result<u64, omemod_client::Error> {
    let mut r = std::io::BufReader::new(std::fs::File::open(input).expect("open"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(output).expect("create"));
    c.decrypt_file(key, &mut r, &mut w, &mut no_progress())
}

/// A daemon, a connection, and three file names in a directory of their own.
struct Bench {
    d: Daemon,
    c: Client,
    plain: PathBuf,
    enc: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

fn bench() -> Bench {
    let d = Daemon::start();
    let c = Client::connect(&d.socket).expect("connect");
    let dir = tempfile::tempdir().expect("tempdir");
    Bench {
        d,
        c,
        plain: dir.path().join("plain"),
        enc: dir.path().join("enc"),
        out: dir.path().join("out"),
        _dir: dir,
    }
}

#[test]
fn cryptography_decrypts_what_omemod_encrypts() {
    let Bench {
        c, plain, enc, out, ..
    } = &bench();
    for (i, &len) in SIZES.iter().enumerate() {
        let p = data(len, i as u64);
        std::fs::write(plain, &p).unwrap();
        let fragment = omemod_encrypt(c, plain, enc);
        assert_eq!(fragment.len(), 88, "a 12-byte IV");
        assert!(fragment
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(std::fs::metadata(enc).unwrap().len(), len as u64 + 16);
        assert!(
            python_aesgcm("decrypt", &fragment, enc, out),
            "cryptography refused omemod's {len}-byte file"
        );
        assert!(std::fs::read(out).unwrap() == p, "{len} bytes differ");
        // And a wrong key is refused there too: the tag is really checked.
        let mut wrong = fragment.clone().into_bytes();
        wrong[87] = if wrong[87] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert!(!python_aesgcm("decrypt", &wrong, enc, out));
    }
}

#[test]
fn omemod_decrypts_what_cryptography_encrypts_with_both_iv_lengths() {
    let Bench {
        c, plain, enc, out, ..
    } = &bench();
    for iv_len in [12, 16] {
        for (i, &len) in SIZES.iter().enumerate() {
            let p = data(len, 100 + i as u64);
            std::fs::write(plain, &p).unwrap();
            let key = data(32 + iv_len, 200 + i as u64 + iv_len as u64);
            let fragment = hex(&[&key[32..], &key[..32]].concat());
            assert!(python_aesgcm("encrypt", &fragment, plain, enc));
            // The key as an aesgcm:// link for the 12-byte IVs, as a fragment for the others.
            let link = format!(
                "aesgcm://upload.example/f/{i}.bin#{}",
                fragment.to_uppercase()
            );
            let key = match iv_len {
                12 => FileKey::Link(&link),
                _ => FileKey::Fragment(&fragment),
            };
            let size = omemod_decrypt(c, key, enc, out)
                .unwrap_or_else(|e| panic!("omemod refused a {len}-byte file, IV {iv_len}: {e}"));
            assert_eq!(size, len as u64);
            assert!(std::fs::read(out).unwrap() == p, "{len} bytes, IV {iv_len}");
        }
    }
}

#[test]
fn omemod_decrypts_a_file_whose_counter_wraps() {
    // Under this key J0 ends in 0xffffffea (protocol-core's media::gcm tests show it): the
    // counter wraps after 21 blocks, in its low 32 bits only, as OpenSSL's does.
    let fragment = format!("{}{}", "0000000000a5bd000000000000000000", "42".repeat(32));
    let Bench {
        c, plain, enc, out, ..
    } = &bench();
    let p = data(100_000, 7);
    std::fs::write(plain, &p).unwrap();
    assert!(python_aesgcm("encrypt", &fragment, plain, enc));
    omemod_decrypt(c, FileKey::Fragment(&fragment), enc, out).expect("omemod decrypts");
    assert!(std::fs::read(out).unwrap() == p);
}

#[test]
#[ignore = "100 MiB both ways: run with --release --ignored"]
fn a_100_mib_file_passes_both_ways_in_bounded_memory() {
    const LEN: usize = 100 * 1024 * 1024 + 7;
    let Bench {
        d,
        c,
        plain,
        enc,
        out,
        ..
    } = &bench();
    let pid = d.pid().expect("pid");
    // Idle: the daemon up, its file code run once on a small file.
    std::fs::write(plain, data(CHUNK * 2, 1)).unwrap();
    omemod_encrypt(c, plain, enc);
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kib(pid);
    std::fs::write(plain, data(LEN, 2)).unwrap();
    let p = std::fs::read(plain).unwrap();
    let mut fragment = String::new();
    let mut peaks = Vec::new();
    let t = Instant::now();
    peaks.push(peak_while(pid, rss_kib, || {
        fragment = omemod_encrypt(c, plain, enc);
    }));
    let encrypt_secs = t.elapsed().as_secs_f64();
    assert!(python_aesgcm("decrypt", &fragment, enc, out));
    assert!(
        std::fs::read(out).unwrap() == p,
        "cryptography read another file"
    );
    let mut decrypt_secs = Vec::new();
    for iv_len in [12, 16] {
        let key = data(32 + iv_len, 3 + iv_len as u64);
        let fragment = hex(&[&key[32..], &key[..32]].concat());
        assert!(python_aesgcm("encrypt", &fragment, plain, enc));
        let t = Instant::now();
        peaks.push(peak_while(pid, rss_kib, || {
            let n =
                omemod_decrypt(c, FileKey::Fragment(&fragment), enc, out).expect("omemod decrypts");
            assert_eq!(n, LEN as u64);
        }));
        decrypt_secs.push(t.elapsed().as_secs_f64());
        assert!(std::fs::read(out).unwrap() == p, "IV {iv_len}");
    }
    let peak = peaks.iter().copied().max().unwrap_or(0);
    let mib = LEN as f64 / (1024.0 * 1024.0);
    eprintln!(
        "100 MiB file: idle RSS {idle} KiB, peak {peak} KiB (+{} KiB; per pass {peaks:?}); \
         encrypt {:.1} MiB/s, decrypt (two passes) {:.1} / {:.1} MiB/s of file",
        peak.saturating_sub(idle),
        mib / encrypt_secs,
        mib / decrypt_secs[0],
        mib / decrypt_secs[1],
    );
    assert!(
        peak <= idle + 16 * 1024,
        "the daemon grew by {} KiB while a 100 MiB file passed (at most 16 MiB)",
        peak - idle
    );
}
