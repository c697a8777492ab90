//! Per-message cost of the protocol core, for both crypto backends:
//! aws-lc-rs (what Herald ships) and RustCrypto (`--features rustcrypto`).
//!
//! Run: `cargo bench --features rustcrypto --bench webpush`
//!
//! Each figure is the best of five short rounds after a warm-up, measured
//! with a plain `Instant` loop; the whole run takes under ten seconds.
use herald::webpush::{
    backend_rustcrypto as rc, ece, AllowedHosts, AuthSecret, Contact, ContentEncoding, Endpoint,
    P256dh, VapidKey, VapidSigner,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

const BUDGET: Duration = Duration::from_millis(1000);
const ROUNDS: u32 = 5;

/// Microseconds per call of `f`: the best of several short rounds, so that
/// other processes competing for the CPU inflate the figure as little as possible.
fn measure(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < BUDGET / 4 {
        f();
    }
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < BUDGET / ROUNDS {
            for _ in 0..8 {
                f();
            }
            n += 8;
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    best
}

fn main() {
    let ua = VapidKey::generate().expect("key");
    let p256dh = P256dh(*ua.public_key());
    let auth = AuthSecret([0x42; 16]);
    let payload = vec![0x61u8; 200];
    let endpoint = Endpoint::parse(
        "https://fcm.googleapis.com/fcm/send/bench",
        &AllowedHosts::vendors(),
    )
    .expect("endpoint");
    let contact = Contact::parse("mailto:ops@example.com").expect("contact");

    let vapid = VapidKey::generate().expect("key");
    let aws_signer = VapidSigner::new(vapid.clone(), Some(contact.clone()));
    let rc_signer = rc::RustCryptoSigner::new(&vapid, Some(contact)).expect("signer");

    // The step of each message that no cache can save: a fresh P-256 key
    // and its agreement with the subscriber's key (RFC 8291, section 3.1).
    let ua_point = ua.public_key().to_vec();
    let rc_point = p256::PublicKey::from_sec1_bytes(&ua_point).expect("point");

    let rows: Vec<(&str, f64, f64)> = vec![
        (
            "ECDH P-256: new key + agreement",
            measure(|| {
                let key =
                    aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256)
                        .unwrap();
                black_box(key.compute_public_key().unwrap());
                let peer = aws_lc_rs::agreement::UnparsedPublicKey::new(
                    &aws_lc_rs::agreement::ECDH_P256,
                    &ua_point,
                );
                aws_lc_rs::agreement::agree(&key, peer, (), |s| {
                    black_box(s);
                    Ok(())
                })
                .unwrap();
            }),
            measure(|| {
                let key = p256::ecdh::EphemeralSecret::random(&mut rand::rngs::OsRng);
                black_box(key.public_key());
                black_box(key.diffie_hellman(&rc_point));
            }),
        ),
        (
            "encrypt aes128gcm, 200 B",
            measure(|| {
                black_box(
                    ece::encrypt(
                        &p256dh,
                        &auth,
                        black_box(&payload),
                        ContentEncoding::Aes128gcm,
                    )
                    .unwrap(),
                );
            }),
            measure(|| {
                black_box(rc::encrypt(&p256dh, &auth, black_box(&payload)).unwrap());
            }),
        ),
        (
            "VAPID sign, cold (no cache)",
            measure(|| {
                black_box(aws_signer.authorization_uncached(&endpoint).unwrap());
            }),
            measure(|| {
                black_box(rc_signer.authorization_uncached(&endpoint).unwrap());
            }),
        ),
        (
            "VAPID header, cached",
            measure(|| {
                black_box(aws_signer.authorization(&endpoint).unwrap());
            }),
            measure(|| {
                black_box(rc_signer.authorization(&endpoint).unwrap());
            }),
        ),
        (
            "message: encrypt + cached header",
            measure(|| {
                black_box(
                    ece::encrypt(&p256dh, &auth, &payload, ContentEncoding::Aes128gcm).unwrap(),
                );
                black_box(aws_signer.authorization(&endpoint).unwrap());
            }),
            measure(|| {
                black_box(rc::encrypt(&p256dh, &auth, &payload).unwrap());
                black_box(rc_signer.authorization(&endpoint).unwrap());
            }),
        ),
    ];

    println!();
    println!(
        "{:<34} {:>14} {:>14}",
        "µs per message", "aws-lc-rs", "RustCrypto"
    );
    println!("{:-<34} {:->14} {:->14}", "", "", "");
    for (name, aws, rust) in rows {
        println!("{name:<34} {aws:>14.2} {rust:>14.2}");
    }
    // ring is in the tree already (rustls): its P-256 is the other
    // assembly implementation at hand, so the floor above is not one
    // library's.
    let rng = ring::rand::SystemRandom::new();
    let ring_ecdh = measure(|| {
        let key = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
            .unwrap();
        black_box(key.compute_public_key().unwrap());
        let peer = ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, &ua_point);
        ring::agreement::agree_ephemeral(key, &peer, |s| {
            black_box(s.len());
        })
        .unwrap();
    });
    println!(
        "{:<34} {ring_ecdh:>14.2} (ring)",
        "ECDH P-256: new key + agreement"
    );
    println!();
}
