//! What the fuzz targets that run the policy component share: one compiled
//! component per process, and the policy they load.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use creditgate::runtime::{ComponentSource, Runtime, RuntimeConfig};

/// Two plans: `tiny`, whose limits an input can reach, and `base`.
pub const POLICY: &str = "
[plans.tiny]
lead_credits = 2
email_credits = 3

[plans.base]
lead_credits = 2000
email_credits = 6000
";

/// The built-in component, compiled on first use (a few hundred ms, then cached
/// on disk in `$CREDITGATE_CACHE_DIR` like every creditgate process).
pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: LazyLock<Arc<Runtime>> = LazyLock::new(|| {
        let config = RuntimeConfig {
            // A fuzzing process is slow and shares the CPU: a budget that trips on
            // preemption would report the machine, not the input.
            decision_budget: Duration::from_secs(5),
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(&ComponentSource::Builtin, config)
            .expect("the built-in component compiles");
        Arc::new(runtime)
    });
    RUNTIME.clone()
}
