//! Runs a non-`Send` object (an `ext4_view::Ext4`, an `ntfs::Ntfs` with its reader) on
//! dedicated worker threads, each with its own instance, and exposes it as a
//! `Send + Sync` handle: callers send closures, a free worker runs them against its
//! instance, the result comes back over a channel.
//!
//! Several workers (each owning an instance built by the same factory) let FUSE and
//! restore threads read in parallel; the instances share nothing but the
//! underlying `ReadAt`, which is `Sync`.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::error::{Error, Result};

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// A pool of worker threads, each owning one `T`.
pub struct Confined<T> {
    jobs: Mutex<Sender<Job<T>>>,
    what: String,
}

impl<T: 'static> Confined<T> {
    /// Starts `workers` threads, each building its instance with `factory`. Fails
    /// (with the factory's error) when the first instance cannot be built.
    pub fn start<F>(workers: usize, what: &str, factory: F) -> Result<Self>
    where
        F: Fn() -> Result<T> + Send + Sync + 'static,
    {
        let factory = Arc::new(factory);
        let (tx, rx) = channel::<Job<T>>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let (ready_tx, ready_rx) = sync_channel::<Result<()>>(1);
            let factory = factory.clone();
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("vmback-fs-{i}"))
                .spawn(move || worker(&*factory, &rx, ready_tx))
                .map_err(|e| Error::io(what, "start filesystem worker thread", e))?;
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::Unsupported {
                        path: what.into(),
                        feature: "filesystem worker died while opening".into(),
                    })
                }
            }
        }
        Ok(Confined {
            jobs: Mutex::new(tx),
            what: what.to_string(),
        })
    }

    /// Runs `f` on some worker's instance and returns its result.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = sync_channel(1);
        let job: Job<T> = Box::new(move |t| {
            let _ = tx.send(f(t));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| self.dead())?;
        rx.recv().map_err(|_| self.dead())
    }

    fn dead(&self) -> Error {
        Error::Unsupported {
            path: self.what.clone().into(),
            feature: "filesystem worker stopped (a previous request panicked)".into(),
        }
    }
}

fn worker<T>(
    factory: &dyn Fn() -> Result<T>,
    rx: &Mutex<Receiver<Job<T>>>,
    ready: std::sync::mpsc::SyncSender<Result<()>>,
) {
    let mut instance = match factory() {
        Ok(t) => {
            let _ = ready.send(Ok(()));
            t
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        // Hold the receiver lock only to take one job, never while running it.
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return, // the handle was dropped
        };
        job(&mut instance);
    }
}
