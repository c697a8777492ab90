//! Published test vectors: Herald must reproduce them byte for byte, and its
//! decrypt must read them back.
//!
//! - RFC 8291 Appendix A (`aes128gcm`).
//! - draft-ietf-webpush-encryption-04 §5 (`aesgcm`), the example the legacy
//!   coding was specified with.
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use herald::webpush::{
    ece::{self, decrypt, encrypt_with, ContentEncoding},
    AuthSecret, P256dh,
};

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// RFC 8291 Appendix A.
const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
const AS_PUBLIC: &str =
    "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
const UA_PUBLIC: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

#[test]
fn rfc8291_appendix_a_exact_body() {
    let p256dh = P256dh::parse(UA_PUBLIC).unwrap();
    let auth = AuthSecret::parse(AUTH).unwrap();
    let as_private: [u8; 32] = b64(AS_PRIVATE).try_into().unwrap();
    let salt: [u8; 16] = b64(SALT).try_into().unwrap();
    let e = encrypt_with(
        &p256dh,
        &auth,
        PLAINTEXT.as_bytes(),
        ContentEncoding::Aes128gcm,
        &as_private,
        &salt,
    )
    .unwrap();
    assert_eq!(URL_SAFE_NO_PAD.encode(&e.body), BODY);
    assert_eq!(e.body, b64(BODY));
    // The header carries the published sender key and record size 4096.
    assert_eq!(&e.body[21..86], b64(AS_PUBLIC).as_slice());
    assert_eq!(&e.body[16..21], &[0x00, 0x00, 0x10, 0x00, 0x41]);
    assert!(e.encryption_header.is_none() && e.crypto_key_header.is_none());
}

#[test]
fn rfc8291_appendix_a_decrypts() {
    let out = decrypt(
        &b64(UA_PRIVATE),
        &b64(AUTH),
        &b64(BODY),
        ContentEncoding::Aes128gcm,
        None,
        None,
    )
    .unwrap();
    assert_eq!(out, PLAINTEXT.as_bytes());
}

#[test]
fn rfc8291_appendix_a_rejects_corruption() {
    let body = b64(BODY);
    // Salt, idlen, sender key, ciphertext and tag are all bound into the
    // result. (The record size is not: a larger one still reads one record.)
    for i in [0, 15, 20, 21, 85, 86, body.len() - 1] {
        let mut bad = body.clone();
        bad[i] ^= 0x01;
        assert!(
            decrypt(
                &b64(UA_PRIVATE),
                &b64(AUTH),
                &bad,
                ContentEncoding::Aes128gcm,
                None,
                None
            )
            .is_err(),
            "flipping byte {i} went unnoticed"
        );
    }
    assert!(decrypt(
        &b64(UA_PRIVATE),
        &b64(AUTH),
        &body[..body.len() - 1],
        ContentEncoding::Aes128gcm,
        None,
        None
    )
    .is_err());
    // A record size smaller than the record splits it: must fail, not panic.
    let mut small_rs = body.clone();
    small_rs[16..20].copy_from_slice(&18u32.to_be_bytes());
    assert!(decrypt(
        &b64(UA_PRIVATE),
        &b64(AUTH),
        &small_rs,
        ContentEncoding::Aes128gcm,
        None,
        None
    )
    .is_err());
}

// draft-ietf-webpush-encryption-04 §5.
const D04_SENDER_PRIVATE: &str = "9c249c7a4f90a448e638e953fab437f27673bdd3e5a9ad34672d22ea6d8e26f6";
const D04_SENDER_PUBLIC: &str = "04da110db6fce091a6f20e59e42171bab4aab17589d7522d7d71166152c4f3963b0989038d7b0811ce1aab161a4351bc06a917089e833e90eb5ad7568ff9ae8075";
const D04_RECEIVER_PRIVATE: &str =
    "f455a5d79fd05100160da0f7937979d19059409e1abb6ec5d55e05d2e2d20ff3";
const D04_RECEIVER_PUBLIC: &str = "042124063ccbf19dc2fa88b643ba04e6dd8da7ea7ba2c8c62e0f77a943f4c2fa914f6d44116c9fd1c40341c6a440cab3e2140a60e4378a5da735972de078005105";
const D04_AUTH: &str = "476f6f20676f6f206727206a6f6f6221";
const D04_SALT: &str = "96781aadbc8a7cca22f59ef9c585e692";
const D04_PLAINTEXT: &str = "I am the walrus";
const D04_CIPHERTEXT: &str = "ea7a80414304f2136ac39277925f1ca55549ca55ca62a64e7ac7991bc52e78aa40";

#[test]
fn aesgcm_draft04_exact_body_and_headers() {
    let p256dh = P256dh(hex(D04_RECEIVER_PUBLIC).try_into().unwrap());
    let auth = AuthSecret(hex(D04_AUTH).try_into().unwrap());
    let sender: [u8; 32] = hex(D04_SENDER_PRIVATE).try_into().unwrap();
    let salt: [u8; 16] = hex(D04_SALT).try_into().unwrap();
    let e = encrypt_with(
        &p256dh,
        &auth,
        D04_PLAINTEXT.as_bytes(),
        ContentEncoding::Aesgcm,
        &sender,
        &salt,
    )
    .unwrap();
    assert_eq!(e.body, hex(D04_CIPHERTEXT));
    assert_eq!(
        e.encryption_header.as_deref(),
        Some(format!("salt={}", URL_SAFE_NO_PAD.encode(salt)).as_str())
    );
    assert_eq!(
        e.crypto_key_header.as_deref(),
        Some(format!("dh={}", URL_SAFE_NO_PAD.encode(hex(D04_SENDER_PUBLIC))).as_str())
    );
}

#[test]
fn aesgcm_draft04_decrypts() {
    let enc = format!("salt={}", URL_SAFE_NO_PAD.encode(hex(D04_SALT)));
    let ck = format!(
        "dh={};p256ecdsa=BOGUS",
        URL_SAFE_NO_PAD.encode(hex(D04_SENDER_PUBLIC))
    );
    let out = decrypt(
        &hex(D04_RECEIVER_PRIVATE),
        &hex(D04_AUTH),
        &hex(D04_CIPHERTEXT),
        ContentEncoding::Aesgcm,
        Some(&enc),
        Some(&ck),
    )
    .unwrap();
    assert_eq!(out, D04_PLAINTEXT.as_bytes());
    // Explicit rs and a keyid, as some senders write them.
    let enc_rs = format!(
        "keyid=p256dh;salt={};rs=4096",
        URL_SAFE_NO_PAD.encode(hex(D04_SALT))
    );
    let ck_ws = format!(
        "keyid=p256dh; dh=\"{}\"",
        URL_SAFE_NO_PAD.encode(hex(D04_SENDER_PUBLIC))
    );
    let out = decrypt(
        &hex(D04_RECEIVER_PRIVATE),
        &hex(D04_AUTH),
        &hex(D04_CIPHERTEXT),
        ContentEncoding::Aesgcm,
        Some(&enc_rs),
        Some(&ck_ws),
    )
    .unwrap();
    assert_eq!(out, D04_PLAINTEXT.as_bytes());
}

#[test]
fn max_plaintext_values() {
    assert_eq!(
        ece::max_plaintext(ContentEncoding::Aes128gcm),
        4096 - 86 - 16 - 1
    );
    assert_eq!(ece::max_plaintext(ContentEncoding::Aesgcm), 4096 - 16 - 2);
}
