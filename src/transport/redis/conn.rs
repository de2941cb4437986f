//! One connection to Redis that reconnects with backoff when it is lost.
use std::time::{Duration, Instant};

use super::{BACKOFF_FIRST, BACKOFF_MAX, CONNECT_TIMEOUT};
use crate::error::{Error, Result};

/// One connection to Redis that reconnects when it is lost.
pub struct Link {
    url: String,
    client: redis::Client,
    con: Option<redis::Connection>,
    /// How long an operation keeps reconnecting before it fails.
    patience: Duration,
    /// Reconnections so far.
    pub reconnects: u64,
}

impl Link {
    /// Opens `url` (`redis://HOST:PORT/DB`) and checks that the server answers; an unreachable or
    /// malformed URL is one line naming it.
    pub fn open(url: &str, patience: Duration) -> Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| Error::input(format!("transport {url}: {e}")))?;
        let mut link = Link {
            url: url.to_string(),
            client,
            con: None,
            patience,
            reconnects: 0,
        };
        link.connect()
            .map_err(|e| Error::input(format!("transport {url}: cannot reach Redis: {e}")))?;
        Ok(link)
    }

    /// Another connection to the same server, as patient as this one.
    pub fn another(&self) -> Result<Link> {
        Link::open(&self.url, self.patience)
    }

    fn connect(&mut self) -> redis::RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        let _: String = redis::cmd("PING").query(&mut con)?;
        self.con = Some(con);
        Ok(())
    }

    /// Runs `f` on the connection, reconnecting with backoff while Redis cannot be reached.
    /// Errors the server returns (a wrong type, a missing group) are not retried.
    pub fn run<T>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut wait = BACKOFF_FIRST;
        let mut said = false;
        loop {
            if self.con.is_none() {
                match self.client.get_connection_with_timeout(CONNECT_TIMEOUT) {
                    Ok(con) => {
                        if said {
                            eprintln!("redis {}: reconnected", self.url);
                            self.reconnects += 1;
                        }
                        self.con = Some(con);
                    }
                    Err(e) => {
                        if start.elapsed() > self.patience {
                            return Err(Error::Corrupt(format!(
                                "redis {}: unreachable for {:.0} s: {e}",
                                self.url,
                                self.patience.as_secs_f64()
                            )));
                        }
                        if !said {
                            eprintln!("redis {}: connection lost ({e}); reconnecting", self.url);
                            said = true;
                        }
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let con = self.con.as_mut().expect("connected above");
            match f(con) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                    self.con = None;
                    if !said {
                        eprintln!("redis {}: connection lost ({e}); reconnecting", self.url);
                        said = true;
                    }
                }
                Err(e) => return Err(Error::Corrupt(format!("redis {}: {e}", self.url))),
            }
        }
    }
}
