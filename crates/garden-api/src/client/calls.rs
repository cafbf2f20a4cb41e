//! The Garden API's calls that are plain request and reply: ping, capacity,
//! containers (create, list, info, destroy, stop), properties, metrics, limits,
//! net in/out, grace time, and streaming tar files in and out.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

use super::connection::Client;
use super::error::ClientError;
use super::http::{container, encode, encode_list};
use crate::types::*;

impl Client {
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call("GET", "/ping", None::<&()>).await
    }

    pub async fn capacity(&self) -> Result<Capacity, ClientError> {
        self.get("/capacity").await
    }

    /// celld's: removes the images and layers no container uses.
    pub async fn gc_images(&self) -> Result<ImageGcReply, ClientError> {
        self.request("POST", "/images/gc", None::<&()>).await
    }

    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, ClientError> {
        let r: HandleReply = self.request("POST", "/containers", Some(spec)).await?;
        Ok(r.handle)
    }

    pub async fn list(&self, properties: &BTreeMap<String, String>) -> Result<Vec<String>, ClientError> {
        let q: Vec<String> = properties.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        let path = if q.is_empty() { "/containers".to_string() } else { format!("/containers?{}", q.join("&")) };
        Ok(self.get::<HandlesReply>(&path).await?.handles)
    }

    pub async fn info(&self, handle: &str) -> Result<ContainerInfo, ClientError> {
        self.get(&container(handle, "/info")).await
    }

    pub async fn bulk_info(&self, handles: &[&str]) -> Result<BTreeMap<String, BulkInfoEntry>, ClientError> {
        self.get(&format!("/containers/bulk_info?handles={}", encode_list(handles))).await
    }

    pub async fn bulk_metrics(&self, handles: &[&str]) -> Result<BTreeMap<String, BulkMetricsEntry>, ClientError> {
        self.get(&format!("/containers/bulk_metrics?handles={}", encode_list(handles))).await
    }

    pub async fn destroy(&self, handle: &str) -> Result<(), ClientError> {
        self.call("DELETE", &container(handle, ""), None::<&()>).await
    }

    pub async fn stop(&self, handle: &str, kill: bool) -> Result<(), ClientError> {
        self.call("PUT", &container(handle, "/stop"), Some(&StopRequest { kill })).await
    }

    pub async fn metrics(&self, handle: &str) -> Result<Metrics, ClientError> {
        self.get(&container(handle, "/metrics")).await
    }

    pub async fn properties(&self, handle: &str) -> Result<BTreeMap<String, String>, ClientError> {
        self.get(&container(handle, "/properties")).await
    }

    pub async fn property(&self, handle: &str, key: &str) -> Result<String, ClientError> {
        let v: PropertyValue = self.get(&container(handle, &format!("/properties/{}", encode(key)))).await?;
        Ok(v.value)
    }

    pub async fn set_property(&self, handle: &str, key: &str, value: &str) -> Result<(), ClientError> {
        let path = container(handle, &format!("/properties/{}", encode(key)));
        self.call("PUT", &path, Some(&PropertyValue { value: value.into() })).await
    }

    pub async fn remove_property(&self, handle: &str, key: &str) -> Result<(), ClientError> {
        self.call("DELETE", &container(handle, &format!("/properties/{}", encode(key))), None::<&()>).await
    }

    /// Maps a host port (0: the server picks) to a container port.
    pub async fn net_in(&self, handle: &str, host_port: u32, container_port: u32) -> Result<NetIn, ClientError> {
        self.request("POST", &container(handle, "/net/in"), Some(&NetIn { host_port, container_port })).await
    }

    pub async fn net_out(&self, handle: &str, rule: &NetOutRule) -> Result<(), ClientError> {
        self.call("POST", &container(handle, "/net/out"), Some(rule)).await
    }

    pub async fn bulk_net_out(&self, handle: &str, rules: &[NetOutRule]) -> Result<(), ClientError> {
        self.call("POST", &container(handle, "/net/out/bulk"), Some(&rules)).await
    }

    /// Sets the idle time after which the server destroys the container.
    pub async fn set_grace_time(&self, handle: &str, grace: Duration) -> Result<(), ClientError> {
        let nanos = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.call("PUT", &container(handle, "/grace_time"), Some(&nanos)).await
    }

    pub async fn current_memory_limits(&self, handle: &str) -> Result<MemoryLimits, ClientError> {
        self.get(&container(handle, "/limits/memory")).await
    }

    pub async fn current_cpu_limits(&self, handle: &str) -> Result<CpuLimits, ClientError> {
        self.get(&container(handle, "/limits/cpu")).await
    }

    pub async fn current_disk_limits(&self, handle: &str) -> Result<DiskLimits, ClientError> {
        self.get(&container(handle, "/limits/disk")).await
    }

    pub async fn current_bandwidth_limits(&self, handle: &str) -> Result<BandwidthLimits, ClientError> {
        self.get(&container(handle, "/limits/bandwidth")).await
    }

    /// Streams an uncompressed tar into `destination`, extracted as `user`
    /// (empty: the server's default). The body goes chunked, as Go's client
    /// sends a reader of unknown length.
    pub async fn stream_in(
        &self,
        handle: &str,
        user: &str,
        destination: &str,
        mut tar: impl AsyncRead + Unpin + Send,
    ) -> Result<(), ClientError> {
        let mut conn = self.connect().await?;
        let path = container(handle, &format!("/files?user={}&destination={}", encode(user), encode(destination)));
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\
             Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        // A server that answers early (an error) may close while we still send;
        // its reply then explains more than the broken pipe would.
        let mut send_error = None;
        loop {
            let n = tar.read(&mut buf).await?;
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&buf[..n]);
            chunk.extend_from_slice(b"\r\n"); // after the last, empty chunk: the end of the body
            if let Err(e) = conn.write_all(&chunk).await {
                send_error = Some(e);
                break;
            }
            if n == 0 {
                break;
            }
        }
        let _ = conn.flush().await;
        let mut r = BufReader::new(conn);
        match (Self::finish(&mut r).await, send_error) {
            (Err(ClientError::Io(_) | ClientError::Protocol(_)), Some(e)) => Err(e.into()),
            (result, _) => result.map(drop),
        }
    }

    /// Returns `source` as an uncompressed tar, read as `user`.
    pub async fn stream_out(&self, handle: &str, user: &str, source: &str) -> Result<Vec<u8>, ClientError> {
        let path = container(handle, &format!("/files?user={}&source={}", encode(user), encode(source)));
        self.request_raw("GET", &path, &[]).await
    }
}
