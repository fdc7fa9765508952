//! `hark serve` with an agent of your own: a keypad menu in front of the configured agent.
//!
//! ```text
//! HARK_DEV_INSECURE=no-signatures cargo run -p hark-gateway --example dtmf_menu
//! ```
//!
//! It reads the same configuration as `hark serve` (`.env`, `hark.toml` or `HARK_CONFIG`, the
//! environment) and serves the same routes; only each call's agent differs: a `menu::DtmfMenu`
//! whose `1` hands the call to the configured agent (`HARK_AGENT`, echo by default), `0`
//! transfers it to `MENU_OPERATOR` (an E.164 number or SIP URI; needs the Twilio credentials
//! of the gateway API), `#` hangs up. Stop it with Ctrl-C: live calls finish first, as with
//! `hark serve`.

mod menu;

use std::process::ExitCode;

use hark_gateway::Hark;
use hark_gateway::serve::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let operator = std::env::var("MENU_OPERATOR")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let served = async {
        Hark::load(None)?
            .agents(menu::factory(operator))
            .run(shutdown_signal())
            .await
    };
    match served.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dtmf_menu: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
