//! Certificates made at test time: a CA and the certificates it issues,
//! written as PEM files where corsd and its clients read them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    pub pem: String,
}

/// An issued certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: Vec<u8>,
}

/// What a leaf certificate says of itself.
pub struct Subject<'a> {
    pub common_name: &'a str,
    pub dns: &'a [&'a str],
    pub uris: &'a [&'a str],
    pub expired: bool,
}

impl<'a> Subject<'a> {
    /// corsd's server certificate: `corsd.test`, `localhost` and 127.0.0.1.
    pub fn server() -> Subject<'static> {
        Subject {
            common_name: "corsd",
            dns: &["corsd.test", "localhost"],
            uris: &[],
            expired: false,
        }
    }

    /// A client named by one DNS SAN.
    pub fn client(dns: &'a [&'a str]) -> Subject<'a> {
        Subject {
            common_name: "client",
            dns,
            uris: &[],
            expired: false,
        }
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for both server and client use.
    pub fn issue(&self, subject: &Subject<'_>) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, subject.common_name);
        for dns in subject.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*dns).try_into().unwrap()));
        }
        for uri in subject.uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
        }
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        if subject.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes the CA certificate as `NAME.pem` in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

/// The PKI the shipped `scripts/make-test-ca` makes, in `dir/pki`; `None`
/// (a skip, or a failure in CI) without openssl.
pub fn from_script(dir: &Path) -> Option<PathBuf> {
    super::tool("CORSD_OPENSSL", "/usr/bin/openssl".into(), "install openssl")?;
    let pki = dir.join("pki");
    let made = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-test-ca"))
        .arg(&pki)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    Some(pki)
}

/// `corsd serve` flags for mTLS with [`from_script`]'s certificates.
pub fn script_flags(pki: &Path) -> Vec<String> {
    let file = |name: &str| pki.join(name).display().to_string();
    [
        "--tls-cert",
        "corsd.crt",
        "--tls-key",
        "corsd.key",
        "--tls-client-ca",
        "ca.crt",
    ]
    .chunks(2)
    .flat_map(|pair| [pair[0].to_owned(), file(pair[1])])
    .collect()
}
