//! OSS of the local cloud: an S3-compatible endpoint on loopback (OSS speaks S3), serving each
//! bucket as a directory under `<state>/oss/`, with AWS signature v4 checked against the local
//! cloud's credentials. s3fs mounts it with `-o url=…,use_path_request_style`.

use std::path::PathBuf;

use berth_cloud::model::Credentials;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// The bucket directory of `bucket` under the OSS root.
pub fn bucket_dir(root: &std::path::Path, bucket: &str) -> PathBuf {
    root.join(bucket)
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, root: PathBuf, creds: Credentials) -> std::io::Result<()> {
    std::fs::create_dir_all(&root)?;
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| std::io::Error::other(format!("OSS root {}: {e:?}", root.display())))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(creds.access_key_id, creds.access_key_secret));
    let service = builder.build();
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "OSS connection ended with an error");
            }
        });
    }
}
