//! A small certificate authority made with the `openssl` CLI, laid out the way qemu's
//! `tls-creds-x509` and libnbd's `tls-certificates=DIR` expect: `ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`.
//!
//! qemu (GnuTLS) checks certificate purposes strictly: the CA must be a CA, leaves must
//! not be, and a server certificate needs `serverAuth`, a client certificate `clientAuth`.
//! Every extension is therefore given explicitly (`openssl x509 -req -extfile`), never
//! taken from the system's `openssl.cnf`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server and a client certificate it signed, in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory holding all five files (qemu's server side and libnbd's client side
    /// both accept it as is).
    pub dir: PathBuf,
}

#[track_caller]
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (scripts/ensure-deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

impl Pki {
    /// Makes a CA named `name` in `dir` (created), a server certificate for `localhost` and
    /// `127.0.0.1`, and a client certificate, all on P-256 keys.
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("creating the PKI directory");
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        let ext = dir.join("ca.ext");
        std::fs::write(
            &ext,
            "[v3]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-config",
            s(&ext),
            "-extensions",
            "v3",
            "-keyout",
            s(&dir.join("ca-key.pem")),
            "-out",
            s(&pki.ca()),
        ]);
        pki.leaf(
            "server",
            "server",
            "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n",
        );
        pki.leaf(
            "client",
            "tessera-test-client",
            "extendedKeyUsage = clientAuth\n",
        );
        pki
    }

    /// `DIR/KIND-cert.pem` and `DIR/KIND-key.pem`, signed by the CA.
    fn leaf(&self, kind: &str, cn: &str, purpose: &str) {
        let dir = &self.dir;
        let (csr, ext) = (
            dir.join(format!("{kind}.csr")),
            dir.join(format!("{kind}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n{purpose}"
            ),
        )
        .unwrap();
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            s(&dir.join(format!("{kind}-key.pem"))),
            "-out",
            s(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.ca()),
            "-CAkey",
            s(&dir.join("ca-key.pem")),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            s(&ext),
            "-out",
            s(&dir.join(format!("{kind}-cert.pem"))),
        ]);
    }

    /// The CA certificate (what clients trust).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca-cert.pem")
    }

    /// The server certificate (for `localhost` and `127.0.0.1`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }

    /// The server's key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// A directory for a client: `ca-cert.pem`, and the client certificate and key when
    /// `with_client_cert`.
    pub fn client_dir(&self, at: &Path, with_client_cert: bool) -> PathBuf {
        std::fs::create_dir_all(at).unwrap();
        std::fs::copy(self.ca(), at.join("ca-cert.pem")).unwrap();
        if with_client_cert {
            for f in ["client-cert.pem", "client-key.pem"] {
                std::fs::copy(self.dir.join(f), at.join(f)).unwrap();
            }
        }
        at.to_path_buf()
    }
}
