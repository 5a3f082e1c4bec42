//! A loopback server on a checkpoint, for `dfastllm batch --model`: the same
//! [`dfastllm_server::launch`] as `dfastllm serve`, so in-process requests get the
//! server's validation and batching.

use std::path::Path;

use tokio::sync::oneshot;

use dfastllm_core::device::DeviceChoice;
use dfastllm_core::models::DTypeChoice;
use dfastllm_server::config::{
    ConfigError, ConfigLayer, FlagOrigins, ModelLayer, RuntimeConfig, ServerLayer,
};
use dfastllm_server::{launch, LaunchError, Launched};

#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// A loopback server that is loaded and ready.
pub struct InProcess {
    pub url: String,
    pub served_name: String,
    stop: oneshot::Sender<()>,
    launched: Launched,
}

impl InProcess {
    /// Serves `model_dir` on a free loopback port with room for `concurrency` requests,
    /// and waits until it is ready.
    pub async fn start(
        model_dir: &Path,
        device: DeviceChoice,
        dtype: DTypeChoice,
        concurrency: usize,
    ) -> Result<Self, InProcessError> {
        let flags = ConfigLayer {
            model: ModelLayer {
                path: Some(model_dir.to_path_buf()),
                device: Some(device),
                dtype: Some(dtype),
                ..ModelLayer::default()
            },
            server: ServerLayer {
                host: Some("127.0.0.1".into()),
                port: Some(0),
                max_concurrent_requests: Some(concurrency.max(1)),
                max_queue: Some(concurrency.max(1) * 4),
                ..ServerLayer::default()
            },
            ..ConfigLayer::default()
        };
        let cfg = RuntimeConfig::from_layers(&flags, &FlagOrigins::default(), None)?;
        let served_name = cfg.served_name.clone();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(LaunchError::from)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut launched = launch(cfg, listener, async {
            let _ = stopped.await;
        })?;
        launched.ready().await?;
        Ok(Self {
            url: format!("http://{}", launched.addr),
            served_name,
            stop,
            launched,
        })
    }

    /// Drains and stops the server.
    pub async fn stop(self) -> Result<(), InProcessError> {
        let _ = self.stop.send(());
        Ok(self.launched.wait().await?)
    }
}
