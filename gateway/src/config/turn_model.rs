//! `[call]` settings of the end-of-turn model (`HARK_END_OF_TURN=smart-turn`): which rule ends
//! a caller's turn, the model's threshold and its longer silence, and the size of the pool that
//! runs it (`hark_engine::io::turn_model`).

use hark_engine::CallConfig;
use hark_engine::config::EndOfTurn;

use super::ConfigError;
use super::values::Values;

/// Reads `HARK_END_OF_TURN` (`silence` or `smart-turn`), `HARK_TURN_MODEL_THRESHOLD_PCT`
/// (1–99), `HARK_TURN_MODEL_STOP_MS` into `call`, and `HARK_TURN_MODEL_THREADS` (1–64) into
/// `threads`.
///
/// # Errors
/// [`ConfigError`] naming a value that is not one of those.
pub(super) fn read(
    call: &mut CallConfig,
    threads: &mut usize,
    v: &Values,
) -> Result<(), ConfigError> {
    if let Some(name) = v.get("HARK_END_OF_TURN") {
        call.turn.end_of_turn = EndOfTurn::from_name(&name).ok_or_else(|| {
            ConfigError::new(
                "HARK_END_OF_TURN",
                format!("{name:?} is not silence or smart-turn"),
            )
        })?;
    }
    if let Some(pct) = v.num_in::<u8>("HARK_TURN_MODEL_THRESHOLD_PCT", 1, 99)? {
        call.turn.model_threshold_pct = pct;
    }
    if let Some(ms) = v.num("HARK_TURN_MODEL_STOP_MS")? {
        call.turn.model_stop_ms = ms;
    }
    if let Some(n) = v.num_in::<usize>("HARK_TURN_MODEL_THREADS", 1, 64)? {
        *threads = n;
    }
    Ok(())
}
