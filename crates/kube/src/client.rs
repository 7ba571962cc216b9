//! The Kubernetes client: in-cluster configuration by default, a kubeconfig file when
//! one is given (`--kubeconfig`, `clientConnection.kubeconfig`), as kube-proxy does.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// kipvs is not running in a pod and was given no kubeconfig.
    #[error(
        "no kubeconfig given and not running in a pod ({0}); pass --kubeconfig FILE or set clientConnection.kubeconfig"
    )]
    InCluster(#[source] kube::config::InClusterError),
    /// The kubeconfig file could not be read or parsed.
    #[error("kubeconfig {}: {source}", path.display())]
    ReadKubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: KubeconfigError,
    },
    /// The kubeconfig was read but does not describe a usable cluster (no current
    /// context, missing server, bad certificate, ...).
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: KubeconfigError,
    },
    /// The client could not be built from the configuration (TLS setup).
    #[error("Kubernetes client: {0}")]
    Build(#[source] kube::Error),
    /// `--master` is not a URL.
    #[error("--master {url:?} is not a URL: {message}")]
    Master {
        /// What was given.
        url: String,
        /// Why it is not a URL.
        message: String,
    },
}

/// Builds a client as kube-proxy does: from the kubeconfig file when a path is given,
/// otherwise from the pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted
/// token and CA). `master` (kube-proxy's `--master`) replaces the server's address;
/// with no kubeconfig it is the whole configuration (no credentials), as in client-go.
///
/// Fails, with an error naming the file or saying that kipvs is not in a pod, when the
/// configuration cannot be read or is incomplete. It does not contact the API server.
pub async fn client(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
) -> Result<kube::Client, ClientError> {
    let bad_master = |url: &str, message: String| ClientError::Master {
        url: url.to_owned(),
        message,
    };
    let mut config = match (kubeconfig, master) {
        (None, None) => kube::Config::incluster().map_err(ClientError::InCluster)?,
        (None, Some(url)) => {
            kube::Config::new(url.parse().map_err(|e| bad_master(url, format!("{e}")))?)
        }
        (Some(path), _) => {
            let file =
                Kubeconfig::read_from(path).map_err(|source| ClientError::ReadKubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
    };
    if let Some(url) = master {
        config.cluster_url = url.parse().map_err(|e| bad_master(url, format!("{e}")))?;
    }
    kube::Client::try_from(config).map_err(ClientError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kipvs-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_an_error_naming_the_file() {
        let Err(err) = client(Some(Path::new("/nonexistent/kubeconfig")), None).await else {
            panic!("a missing file must be an error");
        };
        assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
    }

    #[tokio::test]
    async fn a_kubeconfig_without_a_context_is_an_error_naming_the_file() {
        let path = temp_file("empty.yaml", "apiVersion: v1\nkind: Config\n");
        let Err(err) = client(Some(&path), None).await else {
            panic!("a kubeconfig without a context must be an error");
        };
        assert!(err.to_string().contains("empty.yaml"), "{err}");
    }

    #[tokio::test]
    async fn a_kubeconfig_with_a_server_builds_a_client() {
        let path = temp_file(
            "ok.yaml",
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:1'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
        );
        let client = client(Some(&path), None).await.unwrap();
        assert_eq!(client.default_namespace(), "default");
    }

    #[tokio::test]
    async fn master_replaces_the_kubeconfigs_server_or_stands_alone() {
        let path = temp_file(
            "master.yaml",
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:1'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
        );
        assert!(client(Some(&path), Some("http://10.0.0.1:8080"))
            .await
            .is_ok());
        assert!(client(None, Some("http://10.0.0.1:8080")).await.is_ok());
        let Err(err) = client(None, Some("not a url")).await else {
            panic!("a bad --master must be an error");
        };
        assert!(err.to_string().contains("--master"), "{err}");
    }

    #[tokio::test]
    async fn outside_a_pod_without_a_kubeconfig_the_error_says_what_to_pass() {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            return; // running in a pod: in-cluster configuration may well work
        }
        let Err(err) = client(None, None).await else {
            panic!("no in-cluster configuration outside a pod");
        };
        assert!(err.to_string().contains("--kubeconfig"), "{err}");
    }
}
