//! The experiment store: one SQLite file, `experiment.db`, in the
//! experiment directory (rusqlite with the bundled SQLite).
//!
//! ## Schema (version 2; `PRAGMA application_id` = 0x4D54554E, "MTUN")
//!
//! ```sql
//! CREATE TABLE experiment (            -- one row
//!   id INTEGER PRIMARY KEY CHECK (id = 1),
//!   name TEXT NOT NULL, metric TEXT NOT NULL, mode TEXT NOT NULL,
//!   config TEXT NOT NULL,               -- the whole TuneConfig as JSON (paths absolute)
//!   created_at REAL NOT NULL,           -- unix seconds
//!   finished_at REAL,                   -- set when the experiment ends
//!   runs INTEGER NOT NULL DEFAULT 1);   -- 1 + number of resumes
//! CREATE TABLE trials (
//!   id INTEGER PRIMARY KEY,             -- from 0, in creation order
//!   params TEXT NOT NULL,               -- hyper-parameters, JSON object (PBT: the newest)
//!   state TEXT NOT NULL,                -- pending|running|paused|completed|stopped|error|terminated
//!   attempts INTEGER NOT NULL,          -- starts so far (retries and resumes count)
//!   iteration INTEGER NOT NULL,         -- last reported iteration
//!   last_metric REAL, best_metric REAL, best_iteration INTEGER,
//!   test_accuracy REAL,                 -- when the trainable reports it
//!   error TEXT,                         -- the last failure
//!   created_at REAL NOT NULL, ended_at REAL,
//!   node TEXT,                          -- the node of its latest start (NULL in-process)
//!   node_losses INTEGER NOT NULL DEFAULT 0,  -- restarts after its node died
//!   pauses INTEGER NOT NULL DEFAULT 0); -- restarts after a HyperBand pause
//!                                       -- (neither counts against max_failures)
//! CREATE TABLE results (                -- every reported result, once
//!   trial_id INTEGER NOT NULL REFERENCES trials(id),
//!   iteration INTEGER NOT NULL,
//!   metric REAL,                        -- the experiment's metric (NULL if not reported)
//!   metrics TEXT NOT NULL,              -- all metrics, JSON object
//!   time REAL NOT NULL,                 -- unix seconds
//!   PRIMARY KEY (trial_id, iteration));
//! CREATE TABLE checkpoints (
//!   trial_id INTEGER NOT NULL REFERENCES trials(id),
//!   iteration INTEGER NOT NULL, path TEXT NOT NULL, created_at REAL NOT NULL,
//!   PRIMARY KEY (trial_id, iteration));
//! CREATE TABLE state (                  -- searcher and scheduler, JSON
//!   component TEXT PRIMARY KEY, json TEXT NOT NULL);
//! ```
//!
//! For example `sqlite3 DIR/experiment.db "SELECT id, state, best_metric
//! FROM trials ORDER BY best_metric DESC LIMIT 5"`.
//!
//! A version 1 store (before `node`, `node_losses` and `pauses`) is
//! upgraded in place when it is opened; a newer version is refused.
//!
//! ## Durability
//!
//! WAL journal, `synchronous = NORMAL`, one writer (the controller). Trial
//! creation, starts and ends are committed at once (with the searcher and
//! scheduler state). Results and checkpoint rows are group-committed: each
//! is committed at most `commit_interval_ms` (default 50 ms) after it
//! arrived, in one transaction with the scheduler state. A committed
//! transaction survives the driver being killed (SIGKILL: the WAL is in the
//! OS's page cache); after a power loss the last commits since the WAL was
//! last synced may be gone (SQLite's documented bound for `NORMAL`).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::config::TuneConfig;
use super::space::Params;
use super::trainable::Metrics;
use super::{MetricMode, TuneError};

/// The file name of the store in the experiment directory.
pub const FILE: &str = "experiment.db";
/// `PRAGMA application_id` of the store ("MTUN").
pub const APPLICATION_ID: i64 = 0x4D54_554E;
/// The schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE experiment (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  name TEXT NOT NULL, metric TEXT NOT NULL, mode TEXT NOT NULL,
  config TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL,
  runs INTEGER NOT NULL DEFAULT 1);
CREATE TABLE trials (
  id INTEGER PRIMARY KEY, params TEXT NOT NULL, state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, iteration INTEGER NOT NULL DEFAULT 0,
  last_metric REAL, best_metric REAL, best_iteration INTEGER, test_accuracy REAL,
  error TEXT, created_at REAL NOT NULL, ended_at REAL, node TEXT,
  node_losses INTEGER NOT NULL DEFAULT 0, pauses INTEGER NOT NULL DEFAULT 0);
CREATE TABLE results (
  trial_id INTEGER NOT NULL REFERENCES trials(id), iteration INTEGER NOT NULL,
  metric REAL, metrics TEXT NOT NULL, time REAL NOT NULL,
  PRIMARY KEY (trial_id, iteration));
CREATE TABLE checkpoints (
  trial_id INTEGER NOT NULL REFERENCES trials(id), iteration INTEGER NOT NULL,
  path TEXT NOT NULL, created_at REAL NOT NULL,
  PRIMARY KEY (trial_id, iteration));
CREATE TABLE state (component TEXT PRIMARY KEY, json TEXT NOT NULL);
";

/// A trial as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrialRow {
    /// Its id.
    pub id: u64,
    /// Its hyper-parameters.
    pub params: Params,
    /// Its state.
    pub state: String,
    /// Starts so far.
    pub attempts: u64,
    /// Last reported iteration.
    pub iteration: u64,
    /// Metric of the last result.
    pub last_metric: Option<f64>,
    /// Best metric.
    pub best_metric: Option<f64>,
    /// Iteration of the best metric.
    pub best_iteration: Option<u64>,
    /// Test accuracy, when reported.
    pub test_accuracy: Option<f64>,
    /// The last failure.
    pub error: Option<String>,
    /// The node (its name) of its latest start; `None` in-process.
    pub node: Option<String>,
    /// Restarts after its node died (not failures).
    pub node_losses: u64,
    /// Restarts after a HyperBand pause (not failures).
    pub pauses: u64,
}

/// A result as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResultRow {
    /// The trial.
    pub trial: u64,
    /// The iteration.
    pub iteration: u64,
    /// The experiment's metric.
    pub metric: Option<f64>,
    /// All metrics.
    pub metrics: Metrics,
    /// Unix seconds.
    pub time: f64,
}

/// The store, open.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    in_tx: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Unix seconds now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Store {
    fn err(&self) -> impl Fn(rusqlite::Error) -> TuneError + '_ {
        |e| TuneError::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// A new store in `dir` (created if needed) for `config`. Refuses a
    /// directory that already holds one.
    /// With `experiment.persist = false` the store is an in-memory SQLite
    /// (same schema) and nothing is written to `dir`.
    pub fn create(dir: &Path, config: &TuneConfig) -> Result<Store, TuneError> {
        let path = dir.join(FILE);
        if !config.experiment.persist {
            let conn = Connection::open_in_memory().map_err(|e| TuneError::Store {
                path: ":memory:".into(),
                message: e.to_string(),
            })?;
            let s = Store {
                conn,
                path,
                in_tx: false,
            };
            return s.init(config);
        }
        std::fs::create_dir_all(dir).map_err(|e| TuneError::io(dir, e))?;
        if path.exists() {
            return Err(TuneError::Config(format!(
                "{} already holds an experiment: continue it with --resume {}, or choose another experiment.dir",
                path.display(),
                dir.display()
            )));
        }
        let conn = Connection::open(&path).map_err(|e| TuneError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut s = Store {
            conn,
            path,
            in_tx: false,
        };
        s.pragmas()?;
        s.init(config)
    }

    fn init(self, config: &TuneConfig) -> Result<Store, TuneError> {
        let s = self;
        let json = serde_json::to_string(config).map_err(|e| TuneError::Config(e.to_string()))?;
        let mode = match config.experiment.mode {
            super::MetricMode::Max => "max",
            super::MetricMode::Min => "min",
        };
        s.conn
            .execute_batch(&format!(
                "BEGIN; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; {SCHEMA}"
            ))
            .map_err(s.err())?;
        s.conn
            .execute(
                "INSERT INTO experiment (id, name, metric, mode, config, created_at) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                params![config.experiment.name, config.experiment.metric, mode, json, now()],
            )
            .map_err(s.err())?;
        s.conn.execute_batch("COMMIT").map_err(s.err())?;
        Ok(s)
    }

    fn pragmas(&mut self) -> Result<(), TuneError> {
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            )
            .map_err(self.err())
    }

    /// Opens the store in `dir` and returns it with the experiment's
    /// config. A missing, foreign or corrupt file is an error.
    pub fn open(dir: &Path) -> Result<(Store, TuneConfig), TuneError> {
        let path = dir.join(FILE);
        if !path.is_file() {
            return Err(TuneError::Config(format!(
                "{}: no experiment store (expected {})",
                dir.display(),
                path.display()
            )));
        }
        let foreign = |why: String| TuneError::Foreign {
            path: path.display().to_string(),
            why,
        };
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| foreign(e.to_string()))?;
        let app: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| foreign(e.to_string()))?;
        if app != APPLICATION_ID {
            return Err(foreign(format!(
                "application_id {app:#x}, expected {APPLICATION_ID:#x}"
            )));
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| foreign(e.to_string()))?;
        if version == 1 {
            // Version 2 added three columns with defaults: upgrade in place.
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 ALTER TABLE trials ADD COLUMN node TEXT;
                 ALTER TABLE trials ADD COLUMN node_losses INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE trials ADD COLUMN pauses INTEGER NOT NULL DEFAULT 0;
                 PRAGMA user_version = 2;
                 COMMIT;",
            )
            .map_err(|e| TuneError::Store {
                path: path.display().to_string(),
                message: format!("upgrading schema version 1 to 2: {e}"),
            })?;
        } else if version != SCHEMA_VERSION {
            return Err(foreign(format!(
                "schema version {version}, this build reads {SCHEMA_VERSION} (and upgrades 1)"
            )));
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| foreign(e.to_string()))?;
        if check != "ok" {
            return Err(TuneError::Store {
                path: path.display().to_string(),
                message: format!("corrupt: {check}"),
            });
        }
        let mut s = Store {
            conn,
            path,
            in_tx: false,
        };
        s.pragmas()?;
        let json: String = s
            .conn
            .query_row("SELECT config FROM experiment WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(s.err())?;
        let config: TuneConfig = serde_json::from_str(&json).map_err(|e| TuneError::Store {
            path: s.path.display().to_string(),
            message: format!("stored config unreadable: {e}"),
        })?;
        Ok((s, config))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin(&mut self) -> Result<(), TuneError> {
        if !self.in_tx {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(self.err())?;
            self.in_tx = true;
        }
        Ok(())
    }

    /// Commits what was written since the last commit.
    pub fn commit(&mut self) -> Result<(), TuneError> {
        if self.in_tx {
            self.conn.execute_batch("COMMIT").map_err(self.err())?;
            self.in_tx = false;
        }
        Ok(())
    }

    /// Whether writes wait for a commit.
    pub fn dirty(&self) -> bool {
        self.in_tx
    }

    /// A new trial.
    pub fn insert_trial(&mut self, id: u64, params: &Params) -> Result<(), TuneError> {
        self.begin()?;
        let json = serde_json::to_string(params).map_err(|e| TuneError::Config(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO trials (id, params, state, created_at) VALUES (?1, ?2, 'pending', ?3)",
            )
            .and_then(|mut st| st.execute(params![id as i64, json, now()]))
            .map_err(self.err())?;
        Ok(())
    }

    /// A trial's hyper-parameters changed (PBT's explore).
    pub fn set_params(&mut self, trial: u64, params: &Params) -> Result<(), TuneError> {
        self.begin()?;
        let json = serde_json::to_string(params).map_err(|e| TuneError::Config(e.to_string()))?;
        self.conn
            .prepare_cached("UPDATE trials SET params = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![trial as i64, json]))
            .map_err(self.err())?;
        Ok(())
    }

    /// A trial's state and progress.
    pub fn update_trial(&mut self, t: &TrialRow, ended: bool) -> Result<(), TuneError> {
        self.begin()?;
        self.conn
            .prepare_cached(
                "UPDATE trials SET state = ?2, attempts = ?3, iteration = ?4, last_metric = ?5,
                 best_metric = ?6, best_iteration = ?7, test_accuracy = ?8, error = ?9,
                 ended_at = CASE WHEN ?10 THEN ?11 ELSE NULL END, node = ?12,
                 node_losses = ?13, pauses = ?14 WHERE id = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    t.id as i64,
                    t.state,
                    t.attempts as i64,
                    t.iteration as i64,
                    t.last_metric,
                    t.best_metric,
                    t.best_iteration.map(|i| i as i64),
                    t.test_accuracy,
                    t.error,
                    ended,
                    now(),
                    t.node,
                    t.node_losses as i64,
                    t.pauses as i64
                ])
            })
            .map_err(self.err())?;
        Ok(())
    }

    /// A result; `false` when the trial already has one at `iteration`
    /// (a trial continued from a checkpoint reports again: the first stays).
    pub fn insert_result(
        &mut self,
        trial: u64,
        iteration: u64,
        metric: Option<f64>,
        metrics: &Metrics,
    ) -> Result<bool, TuneError> {
        self.begin()?;
        let json = serde_json::to_string(metrics).map_err(|e| TuneError::Config(e.to_string()))?;
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO results (trial_id, iteration, metric, metrics, time) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| st.execute(params![trial as i64, iteration as i64, metric, json, now()]))
            .map_err(self.err())?;
        Ok(n == 1)
    }

    /// A checkpoint directory of `trial` at `iteration`.
    pub fn insert_checkpoint(
        &mut self,
        trial: u64,
        iteration: u64,
        path: &Path,
    ) -> Result<(), TuneError> {
        self.begin()?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO checkpoints (trial_id, iteration, path, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    trial as i64,
                    iteration as i64,
                    path.display().to_string(),
                    now()
                ])
            })
            .map_err(self.err())?;
        Ok(())
    }

    /// The newest checkpoint of `trial`.
    pub fn latest_checkpoint(&self, trial: u64) -> Result<Option<(u64, PathBuf)>, TuneError> {
        self.conn
            .query_row(
                "SELECT iteration, path FROM checkpoints WHERE trial_id = ?1 ORDER BY iteration DESC LIMIT 1",
                params![trial as i64],
                |r| Ok((r.get::<_, i64>(0)? as u64, PathBuf::from(r.get::<_, String>(1)?))),
            )
            .optional()
            .map_err(self.err())
    }

    /// Saves a component's state (JSON).
    pub fn save_state(&mut self, component: &str, json: &str) -> Result<(), TuneError> {
        self.begin()?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO state (component, json) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(params![component, json]))
            .map_err(self.err())?;
        Ok(())
    }

    /// A component's saved state.
    pub fn load_state(&self, component: &str) -> Result<Option<String>, TuneError> {
        self.conn
            .query_row(
                "SELECT json FROM state WHERE component = ?1",
                params![component],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    /// Marks the experiment finished (committed at once).
    pub fn finish(&mut self) -> Result<(), TuneError> {
        self.begin()?;
        self.conn
            .execute(
                "UPDATE experiment SET finished_at = ?1 WHERE id = 1",
                params![now()],
            )
            .map_err(self.err())?;
        self.commit()
    }

    /// Counts one more run (a resume).
    pub fn count_run(&mut self) -> Result<(), TuneError> {
        self.begin()?;
        self.conn
            .execute(
                "UPDATE experiment SET runs = runs + 1, finished_at = NULL WHERE id = 1",
                [],
            )
            .map_err(self.err())?;
        self.commit()
    }

    /// Every trial, by id.
    pub fn trials(&self) -> Result<Vec<TrialRow>, TuneError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, params, state, attempts, iteration, last_metric, best_metric,
                 best_iteration, test_accuracy, error, node, node_losses, pauses
                 FROM trials ORDER BY id",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                let params: String = r.get(1)?;
                Ok(TrialRow {
                    id: r.get::<_, i64>(0)? as u64,
                    params: serde_json::from_str(&params).unwrap_or_default(),
                    state: r.get(2)?,
                    attempts: r.get::<_, i64>(3)? as u64,
                    iteration: r.get::<_, i64>(4)? as u64,
                    last_metric: r.get(5)?,
                    best_metric: r.get(6)?,
                    best_iteration: r.get::<_, Option<i64>>(7)?.map(|i| i as u64),
                    test_accuracy: r.get(8)?,
                    error: r.get(9)?,
                    node: r.get(10)?,
                    node_losses: r.get::<_, i64>(11)? as u64,
                    pauses: r.get::<_, i64>(12)? as u64,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Every result, by trial and iteration.
    pub fn results(&self) -> Result<Vec<ResultRow>, TuneError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT trial_id, iteration, metric, metrics, time FROM results ORDER BY trial_id, iteration",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                let m: String = r.get(3)?;
                Ok(ResultRow {
                    trial: r.get::<_, i64>(0)? as u64,
                    iteration: r.get::<_, i64>(1)? as u64,
                    metric: r.get(2)?,
                    metrics: serde_json::from_str(&m).unwrap_or_default(),
                    time: r.get(4)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Start time of the experiment (unix seconds).
    pub fn created_at(&self) -> Result<f64, TuneError> {
        self.conn
            .query_row("SELECT created_at FROM experiment WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(self.err())
    }
}

/// The best trial of an experiment with its newest checkpoint: what
/// serving deploys from an experiment directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BestCheckpoint {
    /// The trial id.
    pub trial: u64,
    /// The experiment's metric at its newest checkpoint (the weights
    /// deployed).
    pub metric: f64,
    /// The metric's name.
    pub metric_name: String,
    /// Its state (`completed`, `stopped`, `terminated` or `paused`).
    pub state: String,
    /// The iteration of its newest checkpoint.
    pub iteration: u64,
    /// Its newest checkpoint directory.
    pub checkpoint: PathBuf,
    /// Every metric of its result at that checkpoint's iteration.
    pub metrics: Metrics,
}

/// Trial states whose checkpoints serving may deploy: finished, stopped
/// by the scheduler or by the experiment's time budget, or paused at a
/// HyperBand rung (their checkpointed weights are whole).
const SERVABLE: [&str; 4] = ["completed", "stopped", "terminated", "paused"];

/// One trial as serving would take it: its newest checkpoint, scored by
/// the experiment's metric in its result at that checkpoint's iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedCandidate {
    /// The trial id.
    pub trial: u64,
    /// Its state.
    pub state: String,
    /// Its newest checkpoint's iteration.
    pub iteration: u64,
    /// Its newest checkpoint directory.
    pub checkpoint: PathBuf,
    /// The experiment's metric at that iteration.
    pub metric: f64,
    /// Every metric of the result at that iteration.
    pub metrics: Metrics,
}

/// The trial whose checkpoint serving deploys, by the rule `manta tune`'s
/// summary also uses: every trial in a [`SERVABLE`] state is scored by the
/// metric of its result at the iteration of its newest checkpoint (the
/// weights that would be deployed, not a better iteration it did not
/// keep), best by the experiment's mode, ties to the lower trial id; a
/// NaN score never wins. `None` when no such trial has a checkpoint with
/// a result reporting the metric.
pub fn best_served(store: &Store, mode: MetricMode) -> Result<Option<ServedCandidate>, TuneError> {
    let trials = store.trials()?;
    let results = store.results()?;
    let mut best: Option<ServedCandidate> = None;
    for t in trials
        .iter()
        .filter(|t| SERVABLE.contains(&t.state.as_str()))
    {
        let Some((iteration, checkpoint)) = store.latest_checkpoint(t.id)? else {
            continue;
        };
        let Some(r) = results
            .iter()
            .find(|r| r.trial == t.id && r.iteration == iteration)
        else {
            continue;
        };
        let Some(metric) = r.metric.filter(|m| !m.is_nan()) else {
            continue;
        };
        if best
            .as_ref()
            .is_some_and(|b| mode.score(metric) <= mode.score(b.metric))
        {
            continue;
        }
        best = Some(ServedCandidate {
            trial: t.id,
            state: t.state.clone(),
            iteration,
            checkpoint,
            metric,
            metrics: r.metrics.clone(),
        });
    }
    Ok(best)
}

/// The trial serving deploys from the experiment in `dir` and its newest
/// checkpoint ([`best_served`]). Clear errors for a directory without a
/// store, an experiment without a trial that reported the metric, or
/// trials without a checkpoint.
pub fn best_checkpoint(dir: &Path) -> Result<BestCheckpoint, TuneError> {
    let (store, config) = Store::open(dir)?;
    let mode = config.experiment.mode;
    let metric_name = config.experiment.metric.clone();
    if let Some(c) = best_served(&store, mode)? {
        return Ok(BestCheckpoint {
            trial: c.trial,
            metric: c.metric,
            metric_name,
            state: c.state,
            iteration: c.iteration,
            checkpoint: c.checkpoint,
            metrics: c.metrics,
        });
    }
    let trials = store.trials()?;
    let reported: Vec<&TrialRow> = trials.iter().filter(|t| t.best_metric.is_some()).collect();
    if reported.is_empty() {
        return Err(TuneError::Config(format!(
            "{}: no completed trial reported `{metric_name}` yet ({} trials: {})",
            dir.display(),
            trials.len(),
            trials
                .iter()
                .map(|t| format!("{} {}", t.id, t.state))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Err(TuneError::Config(format!(
        "{}: every trial that reported `{metric_name}` ({}) has no checkpoint with a result at its iteration (set experiment.checkpoint_every)",
        dir.display(),
        reported
            .iter()
            .map(|t| format!("{} {}", t.id, t.state))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
