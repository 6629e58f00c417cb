//! Helpers shared by the connection tests: an injected environment, temporary files and
//! directories, self-signed certificates.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use openssl::pkey::PKey;

pub use super::{ConnArgs, ConnError, Endpoint};

/// An environment with only `vars`, plus a HOME without a .pgpass so the real
/// ~/.pgpass is never read.
pub fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry("HOME".into())
        .or_insert_with(|| "/nonexistent/rserv-conn-test-home".into());
    move |k| map.get(k).cloned()
}

pub fn resolve(specific: &ConnArgs, defaults: &ConnArgs, vars: &[(&str, &str)]) -> Endpoint {
    match Endpoint::resolve_with(specific, defaults, None, &env_of(vars)) {
        Ok(e) => e,
        Err(e) => panic!("resolve failed: {e}"),
    }
}

pub fn resolve_err(specific: &ConnArgs, vars: &[(&str, &str)]) -> ConnError {
    match Endpoint::resolve_with(specific, &ConnArgs::default(), None, &env_of(vars)) {
        Ok(e) => panic!("expected an error, got {e:?}"),
        Err(e) => e,
    }
}

pub fn conninfo(s: &str) -> ConnArgs {
    ConnArgs {
        conninfo: Some(s.into()),
        ..Default::default()
    }
}

pub fn password_of(e: &Endpoint) -> Option<String> {
    e.password
        .as_ref()
        .map(|p| String::from_utf8_lossy(&p.0).into_owned())
}

/// A file under temp_dir with the given mode, removed on drop.
pub struct TempFile(pub PathBuf);
impl TempFile {
    pub fn new(name: &str, contents: &str, mode: u32) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("rserv-conn-test-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&path);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        // The umask may have masked the requested mode.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        TempFile(path)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A self-signed PEM certificate and its unencrypted PKCS#8 key.
pub fn self_signed(cn: &str) -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

/// A directory under temp_dir, removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("rserv-conn-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    pub fn file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.0.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn tls_err(specific: &ConnArgs, vars: &[(&str, &str)]) -> String {
    match resolve_err(specific, vars) {
        e @ ConnError::Tls { .. } => e.to_string(),
        other => panic!("expected a TLS setup error, got {other}"),
    }
}
