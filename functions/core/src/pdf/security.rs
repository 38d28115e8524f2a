//! Whether an encrypted PDF opens without a password: the standard security handler's check of
//! the empty user password (ISO 32000-2, 7.6.4.4: algorithms 2, 4 and 5 for revisions 2–4, and
//! 2.A/2.B for revisions 5 and 6). Such a file needs a password only to change it, and every
//! reader, PDFium included, opens it as it is. Its key then decrypts the object streams the
//! catalog and page tree may be kept in (algorithm 1 and the crypt filters of 7.6.5).

use aes::cipher::consts::U16;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use aes::{Aes128, Aes256};
use md5::{Digest as _, Md5};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::{Dict, Obj, get, get_int, is_name};

/// The 32 bytes a password is padded with (algorithm 2, step a).
const PAD: [u8; 32] = [
    0x28, 0xBF, 0x4E, 0x5E, 0x4E, 0x75, 0x8A, 0x41, 0x64, 0x00, 0x4E, 0x56, 0xFF, 0xFA, 0x01, 0x08, 0x2E, 0x2E, 0x00,
    0xB6, 0xD0, 0x68, 0x3E, 0x80, 0x2F, 0x0C, 0xA9, 0xFE, 0x64, 0x53, 0x69, 0x7A,
];

/// How an encrypted file's streams decrypt, once its key is known.
#[derive(Debug, Clone)]
pub(super) struct Decryptor {
    key: Vec<u8>,
    /// `None`: streams are left in the clear (crypt filter `Identity` or `None`).
    cipher: Option<Cipher>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Rc4,
    Aes128,
    Aes256,
}

impl Decryptor {
    /// Stream data of object `num` `generation`, decrypted (`None`: it does not decrypt).
    pub(super) fn stream(&self, num: u32, generation: u16, data: &[u8]) -> Option<Vec<u8>> {
        // Revisions 2–4 key each object by its number (algorithm 1); AES-256 uses the file key.
        let object_key = |aes: bool| {
            let mut h = Md5::new()
                .chain_update(&self.key)
                .chain_update(&num.to_le_bytes()[..3])
                .chain_update(generation.to_le_bytes());
            if aes {
                h.update(b"sAlT");
            }
            h.finalize()[..(self.key.len() + 5).min(16)].to_vec()
        };
        match self.cipher {
            None => Some(data.to_vec()),
            Some(Cipher::Rc4) => Some(rc4(&object_key(false), data)),
            Some(Cipher::Aes128) => {
                let cipher = Aes128::new_from_slice(&object_key(true)).ok()?;
                cbc_decrypt(|b| cipher.decrypt_block(b), data)
            }
            Some(Cipher::Aes256) => {
                let cipher = Aes256::new_from_slice(&self.key).ok()?;
                cbc_decrypt(|b| cipher.decrypt_block(b), data)
            }
        }
    }
}

/// How a file encrypted by the standard handler decrypts with the empty user password; `None`
/// if it needs a password (or another handler) to open. `enc` is the encryption dictionary, `id`
/// the first part of the trailer's /ID.
pub(super) fn open_without_password(enc: &Dict, id: &[u8]) -> Option<Decryptor> {
    if !is_name(get(enc, b"Filter"), b"Standard") {
        return None; // a public-key or third-party handler: certificates, not passwords
    }
    let (Some(Obj::Str(o)), Some(Obj::Str(u))) = (get(enc, b"O"), get(enc, b"U")) else { return None };
    let r = get_int(enc, b"R")?;
    let key = match r {
        2..=4 => {
            if o.len() < 32 || u.len() < 32 {
                return None;
            }
            let bits = if r == 2 { 40 } else { get_int(enc, b"Length").unwrap_or(40) };
            let n = (bits / 8).clamp(5, 16) as usize;
            // /P is a signed 32-bit number; some writers print it unsigned.
            let p = get_int(enc, b"P").unwrap_or(0) as u32;
            let encrypt_metadata = !matches!(get(enc, b"EncryptMetadata"), Some(Obj::Bool(false)));
            let key = file_key(&o[..32], p, id, n, r, encrypt_metadata);
            let opens = if r == 2 {
                rc4(&key, &PAD) == u[..32]
            } else {
                let mut x = rc4(&key, &Md5::new().chain_update(PAD).chain_update(id).finalize());
                for i in 1..=19u8 {
                    let k: Vec<u8> = key.iter().map(|b| b ^ i).collect();
                    x = rc4(&k, &x);
                }
                x[..16] == u[..16]
            };
            opens.then_some(key)?
        }
        5 | 6 => {
            // Algorithm 2.A: the user key checks against U; the file key is UE decrypted by
            // the key made with U's key salt.
            let Some(Obj::Str(ue)) = get(enc, b"UE") else { return None };
            if u.len() < 48 || ue.len() != 32 {
                return None;
            }
            let hash = |salt: &[u8]| if r == 5 { Sha256::digest(salt).to_vec() } else { hash_2b(salt) };
            if hash(&u[32..40])[..32] != u[..32] {
                return None;
            }
            let cipher = Aes256::new_from_slice(&hash(&u[40..48])[..32]).ok()?;
            let mut key = [0u8; 48];
            key[16..].copy_from_slice(ue);
            // CBC with a zero IV and no padding: the zero block in front is the IV.
            cbc_decrypt(|b| cipher.decrypt_block(b), &key).map(|mut k| {
                k.truncate(32);
                k
            })?
        }
        _ => return None,
    };
    Some(Decryptor { key, cipher: stream_cipher(enc, r)? })
}

/// The cipher of streams: RC4 before revision 4; from revision 4, the crypt filter /StmF names.
/// `None` inside means streams are in the clear; the outer `None`, a filter not known.
fn stream_cipher(enc: &Dict, r: i64) -> Option<Option<Cipher>> {
    match r {
        2 | 3 => return Some(Some(Cipher::Rc4)),
        5 | 6 => return Some(Some(Cipher::Aes256)),
        _ => {}
    }
    let name = match get(enc, b"StmF") {
        Some(Obj::Name(n)) => n.clone(),
        _ => return Some(None), // Identity by default
    };
    if name == b"Identity" {
        return Some(None);
    }
    let Some(Obj::Dict(filters)) = get(enc, b"CF") else { return None };
    let Some(Obj::Dict(filter)) = get(filters, &name) else { return None };
    match get(filter, b"CFM") {
        Some(Obj::Name(m)) if m == b"V2" => Some(Some(Cipher::Rc4)),
        Some(Obj::Name(m)) if m == b"AESV2" => Some(Some(Cipher::Aes128)),
        Some(Obj::Name(m)) if m == b"AESV3" => Some(Some(Cipher::Aes256)),
        None => Some(None),
        Some(Obj::Name(m)) if m == b"None" => Some(None),
        _ => None,
    }
}

/// CBC decryption whose first 16 bytes are the IV, with PKCS#5 padding removed when present.
fn cbc_decrypt(decrypt: impl Fn(&mut GenericArray<u8, U16>), data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 32 || !data.len().is_multiple_of(16) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() - 16);
    let mut prev = &data[..16];
    for block in data[16..].chunks_exact(16) {
        let mut b = GenericArray::clone_from_slice(block);
        decrypt(&mut b);
        out.extend(b.iter().zip(prev).map(|(x, p)| x ^ p));
        prev = block;
    }
    if let Some(&pad) = out.last()
        && (1..=16).contains(&pad)
        && out[out.len() - usize::from(pad)..].iter().all(|b| *b == pad)
    {
        out.truncate(out.len() - usize::from(pad));
    }
    Some(out)
}

/// Algorithm 2: the file key from the empty password.
fn file_key(o: &[u8], p: u32, id: &[u8], n: usize, r: i64, encrypt_metadata: bool) -> Vec<u8> {
    let mut h = Md5::new().chain_update(PAD).chain_update(o).chain_update(p.to_le_bytes()).chain_update(id);
    if r >= 4 && !encrypt_metadata {
        h.update([0xFF; 4]);
    }
    let mut key = h.finalize()[..n].to_vec();
    if r >= 3 {
        for _ in 0..50 {
            key = Md5::digest(&key)[..n].to_vec();
        }
    }
    key
}

fn rc4(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s: Vec<u8> = (0..=255).collect();
    let mut j = 0u8;
    for i in 0..256 {
        j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
        s.swap(i, j as usize);
    }
    let (mut i, mut j) = (0u8, 0u8);
    data.iter()
        .map(|b| {
            i = i.wrapping_add(1);
            j = j.wrapping_add(s[i as usize]);
            s.swap(i as usize, j as usize);
            b ^ s[s[i as usize].wrapping_add(s[j as usize]) as usize]
        })
        .collect()
}

/// Algorithm 2.B for the empty password and no user key (the user password's check).
fn hash_2b(salt: &[u8]) -> Vec<u8> {
    let mut k = Sha256::digest(salt).to_vec();
    let mut e: Vec<u8> = Vec::new();
    let mut round = 0usize;
    while round < 64 || usize::from(*e.last().unwrap_or(&0)) > round - 32 {
        let k1 = k.repeat(64);
        e = aes128_cbc(&k[..16], &k[16..32], &k1);
        let sum: u32 = e[..16].iter().map(|b| u32::from(*b)).sum();
        k = match sum % 3 {
            0 => Sha256::digest(&e).to_vec(),
            1 => Sha384::digest(&e).to_vec(),
            _ => Sha512::digest(&e).to_vec(),
        };
        round += 1;
    }
    k.truncate(32);
    k
}

/// AES-128 in CBC mode, no padding (`data` is whole blocks).
fn aes128_cbc(key: &[u8], iv: &[u8], data: &[u8]) -> Vec<u8> {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut prev: [u8; 16] = iv.try_into().expect("16-byte IV");
    let mut out = Vec::with_capacity(data.len());
    for block in data.chunks_exact(16) {
        let mut b = GenericArray::clone_from_slice(block);
        for (x, p) in b.iter_mut().zip(prev) {
            *x ^= p;
        }
        cipher.encrypt_block(&mut b);
        prev.copy_from_slice(&b);
        out.extend_from_slice(&b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc4_matches_its_published_vectors() {
        // RFC 6229's first vector (key 0x0102030405), the first 16 bytes of keystream.
        let ks = rc4(&[1, 2, 3, 4, 5], &[0; 16]);
        assert_eq!(
            ks,
            [0xb2, 0x39, 0x63, 0x05, 0xf0, 0x3d, 0xc0, 0x27, 0xcc, 0xc3, 0x52, 0x4a, 0x0a, 0x11, 0x18, 0xa8]
        );
    }

    #[test]
    fn aes_cbc_matches_nist() {
        // NIST SP 800-38A F.2.1, CBC-AES128.Encrypt, first block.
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let out = aes128_cbc(&key, &iv, &hex("6bc1bee22e409f96e93d7e117393172a"));
        assert_eq!(out, hex("7649abac8119b246cee98e9b12e9197d"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
