//! The first message of an ElevenLabs conversation: `conversation_initiation_client_data`
//! (`fixtures/specs/elevenlabs/agent.asyncapi.yaml`, `ConversationInitiation`).

use serde_json::{Map, Value, json};

use super::ElevenLabsAgent;

impl ElevenLabsAgent {
    /// `conversation_initiation_client_data`: the configured overrides (a stream parameter of
    /// the same name wins), the voicemail message as `first_message` once a machine answered,
    /// and the stream's parameters as `dynamic_variables`.
    pub(super) fn initiation(&self) -> Value {
        let params: &[(String, String)] = self.info.as_ref().map_or(&[], |i| &i.parameters[..]);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let o = &self.cfg.overrides;
        let prompt = param("prompt").or_else(|| o.prompt.clone());
        let voicemail = self.machine.as_ref().and_then(|(m, _)| m.clone());
        let first = voicemail
            .or_else(|| param("first_message"))
            .or_else(|| o.first_message.clone());
        let language = param("language").or_else(|| o.language.clone());
        let voice = param("voice_id").or_else(|| o.voice_id.clone());
        let mut agent = Map::new();
        if let Some(p) = prompt {
            agent.insert("prompt".into(), json!({ "prompt": p }));
        }
        if let Some(f) = first {
            agent.insert("first_message".into(), json!(f));
        }
        if let Some(l) = language {
            agent.insert("language".into(), json!(l));
        }
        let mut overrides = Map::new();
        if !agent.is_empty() {
            overrides.insert("agent".into(), Value::Object(agent));
        }
        if let Some(v) = voice {
            overrides.insert("tts".into(), json!({ "voice_id": v }));
        }
        let mut msg = Map::new();
        msg.insert("type".into(), json!("conversation_initiation_client_data"));
        if !overrides.is_empty() {
            msg.insert(
                "conversation_config_override".into(),
                Value::Object(overrides),
            );
        }
        if self.cfg.dynamic_variables && !params.is_empty() {
            let vars: Map<String, Value> = params
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            msg.insert("dynamic_variables".into(), Value::Object(vars));
        }
        Value::Object(msg)
    }
}
