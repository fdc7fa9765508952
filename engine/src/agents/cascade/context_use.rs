//! This call's context: the operator's answer ([`crate::agents::context`]) or the configured
//! defaults, applied once at the start — prompt and greeting (placeholders filled), voice,
//! language, tools — then the greeting.

use std::collections::BTreeMap;
use std::time::Instant;

use super::utterance::Owner;
use super::{CascadeAgent, report};
use crate::agent::{Action, AgentReport, PeerId, ProviderFault};
use crate::agents::context::{self, CallContext, PROVIDER_CONTEXT};

impl CascadeAgent {
    /// The context request on `peer` answered (`Ok(body)`) or failed: this call starts with
    /// the answer, or with the defaults (the fault reported).
    pub(super) fn on_context(
        &mut self,
        now: Instant,
        peer: PeerId,
        answer: Result<&[u8], &ProviderFault>,
        out: &mut Vec<Action>,
    ) {
        self.pipes.ended(peer);
        let ctx = match answer.map(context::parse) {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                fault(out, "bad_answer", e);
                None
            }
            Err(f) => {
                fault(out, &f.label(), f.to_string());
                None
            }
        };
        self.begin(now, ctx, out);
    }

    /// Applies `ctx` (or the defaults) and says the greeting. Priority, per field: the
    /// backend's answer, then the call's `<Parameter>` (`system_prompt_param`,
    /// `greeting_param`), then the configuration.
    pub(super) fn begin(&mut self, now: Instant, ctx: Option<CallContext>, out: &mut Vec<Action>) {
        let ctx = ctx.unwrap_or_default();
        let params = self.facts.parameters.clone();
        let param = |name: &str| -> Option<String> {
            if name.is_empty() {
                return None;
            }
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let prompt = ctx
            .system_prompt
            .clone()
            .or_else(|| param(&self.cfg.system_prompt_param))
            .unwrap_or_else(|| self.cfg.system_prompt.clone());
        self.system_prompt = context::fill(&prompt, &ctx.variables, &params);
        if let Some(v) = ctx.voice {
            self.cfg.tts.voice = v;
        }
        if let Some(l) = ctx.language {
            self.cfg.stt.language = Some(l);
        }
        if let Some(names) = &ctx.tools {
            self.keep_tools(names);
        }
        let greeting = ctx
            .greeting
            .clone()
            .or_else(|| param(&self.cfg.greeting_param))
            .or_else(|| self.cfg.greeting.clone())
            .map(|g| context::fill(&g, &ctx.variables, &params))
            .filter(|g| !g.trim().is_empty());
        if let Some(g) = greeting {
            self.say(now, Owner::Greeting, &g, out);
        }
        self.variables = ctx.variables;
    }

    /// Offers only the tools named (hark's and the operator's).
    fn keep_tools(&mut self, names: &[String]) {
        let has = |n: &str| names.iter().any(|x| x == n);
        let t = &mut self.cfg.tools;
        t.end_call &= has("end_call");
        t.transfer_call &= has("transfer_call");
        let kept: Vec<_> = t
            .http
            .tools
            .iter()
            .filter(|x| has(&x.name))
            .cloned()
            .collect();
        t.http.tools = kept.into();
    }

    /// The variables of this call's context (for placeholders in later phrases).
    pub fn variables(&self) -> &BTreeMap<String, String> {
        &self.variables
    }
}

fn fault(out: &mut Vec<Action>, kind: &str, detail: String) {
    report(
        out,
        AgentReport::ProviderFault {
            provider: PROVIDER_CONTEXT.into(),
            kind: kind.into(),
            detail: format!("the defaults apply: {detail}"),
        },
    );
}
