//! SSH agent forwarding to a client's session for `RUN --mount=type=ssh`: BuildKit's
//! `SSH` service (`CheckAgent` with the agent ID first; then, for each connection to the
//! step's socket, one `ForwardAgent` stream naming the ID in the `buildkit.ssh.id`
//! metadata, whose messages carry the bytes each way). A session that does not serve it,
//! or answers `NotFound`, has no such agent. Messages from the client are bounded.

use super::super::proto::sshforward::ssh_client::SshClient;
use super::super::proto::sshforward::{BytesMessage, CheckAgentRequest};
use crate::frontend::{SshError, SshSource};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// The method a session forwarding agents lists.
pub const CHECK_AGENT: &str = "/moby.sshforward.v1.SSH/CheckAgent";
/// The metadata key naming the agent of a `ForwardAgent` stream.
pub const SSH_ID_KEY: &str = "buildkit.ssh.id";
/// Largest message taken from the session.
const MAX_MESSAGE: usize = 1 << 20;
/// Longest `CheckAgent` may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The agents of one session.
#[derive(Debug, Clone)]
pub struct SessionSsh {
    session: String,
    channel: Channel,
    serves: bool,
}

impl SessionSsh {
    /// The agents session `session` forwards over `channel` (`serves`: it lists
    /// [`CHECK_AGENT`]).
    pub fn new(session: &str, channel: Channel, serves: bool) -> Self {
        SessionSsh {
            session: session.to_string(),
            channel,
            serves,
        }
    }

    fn client(&self) -> SshClient<Channel> {
        SshClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
}

impl SshSource for SessionSsh {
    fn check<'a>(
        &'a self,
        id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), SshError>> {
        Box::pin(async move {
            if !self.serves {
                return Err(SshError::NotFound(id.to_string()));
            }
            let req = CheckAgentRequest { id: id.to_string() };
            match tokio::time::timeout(TIMEOUT, self.client().check_agent(req)).await {
                Err(_) => Err(SshError::Failed {
                    id: id.to_string(),
                    message: format!("session {} did not answer within {TIMEOUT:?}", self.session),
                }),
                Ok(Err(s))
                    if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) =>
                {
                    Err(SshError::NotFound(id.to_string()))
                }
                Ok(Err(s)) => Err(SshError::Failed {
                    id: id.to_string(),
                    message: s.message().to_string(),
                }),
                Ok(Ok(_)) => Ok(()),
            }
        })
    }

    fn forward(
        &self,
        id: String,
        conn: tokio::net::UnixStream,
    ) -> futures_util::future::BoxFuture<'static, Result<(), SshError>> {
        let mut client = self.client();
        Box::pin(async move {
            let failed = |message: String| SshError::Failed {
                id: id.clone(),
                message,
            };
            let (mut rd, mut wr) = conn.into_split();
            let (tx, rx) = tokio::sync::mpsc::channel::<BytesMessage>(4);
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let m = BytesMessage {
                                data: buf[..n].to_vec(),
                            };
                            if tx.send(m).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            let v = id
                .parse()
                .map_err(|_| failed("the agent ID is not a metadata value".into()))?;
            req.metadata_mut().insert(SSH_ID_KEY, v);
            let r = client.forward_agent(req).await;
            let mut inbound = match r {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    reader.abort();
                    return Err(failed(s.message().to_string()));
                }
            };
            let mut result = Ok(());
            while let Some(m) = inbound.next().await {
                match m {
                    Ok(m) => {
                        if wr.write_all(&m.data).await.is_err() {
                            break;
                        }
                    }
                    Err(s) => {
                        result = Err(failed(s.message().to_string()));
                        break;
                    }
                }
            }
            reader.abort();
            let _ = wr.shutdown().await;
            result
        })
    }
}
