//! A daemon build is cancelled when its client goes away. gRPC drops a call's future when
//! the client disconnects; a build future dropped mid-step would leave the step's
//! container running (killing `runc run` does not kill what it started) and its mounts in
//! place. So each build runs in a task of its own, with a cancel signal of its own (also
//! raised by the worker's), and the caller holds a guard that raises it when dropped: the
//! steps are then killed through the runtime and cleaned up, as for a build cancelled in
//! process, and the task ends.

use crate::frontend::Worker;
use tokio::sync::watch;

/// Raises a build's cancel signal when dropped (the call that waited for it is gone).
#[derive(Debug)]
pub struct CancelOnDrop(watch::Sender<bool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // After a build that ended, no receiver is left and nothing is sent.
        if self.0.send(true).is_ok() {
            tracing::info!("the build's caller went away: cancelling its steps");
        }
    }
}

/// `worker` with a cancel signal of the build's own, raised by the guard or by the
/// worker's signal.
pub fn per_build(worker: &Worker) -> (Worker, CancelOnDrop) {
    let (tx, rx) = watch::channel(false);
    let mut global = worker.cancel.clone();
    let forward = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = global.wait_for(|c| *c) => {
                if r.is_ok() {
                    let _ = forward.send(true);
                }
            }
            () = forward.closed() => {}
        }
    });
    let mut w = worker.clone();
    w.cancel = rx;
    (w, CancelOnDrop(tx))
}

#[cfg(test)]
mod tests {
    use super::CancelOnDrop;
    use tokio::sync::watch;

    #[tokio::test]
    async fn dropping_the_guard_raises_the_signal() {
        let (tx, mut rx) = watch::channel(false);
        drop(CancelOnDrop(tx));
        assert!(*rx.wait_for(|c| *c).await.unwrap());
    }
}
