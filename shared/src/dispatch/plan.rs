//! The plan of one delivery attempt: the steps to try in order, each one channel's
//! recipient and content through one provider account.

use std::sync::Arc;

use crate::delivery::Ambiguity;
use crate::message::{Alternate, Channel, Message};
use crate::routing::Route;
use crate::shaping::Rate;

/// One way to send a message. `P` is the provider itself (the shell's handle to call
/// it); the decisions only read the data beside it.
#[derive(Debug, Clone)]
pub struct Step<P> {
    pub leg: Arc<Alternate>,
    /// The provider's stable name.
    pub provider: &'static str,
    /// `{provider}.{account id}`: the unit rate buckets and circuits are kept by.
    pub account: String,
    /// The rate to shape sends to (the app's own, else the vendor's documented one).
    pub rate: Option<Rate>,
    /// What to do when a send's outcome is lost.
    pub ambiguity: Ambiguity,
    pub handle: P,
}

impl<P> Step<P> {
    /// `channel:provider`, as kept in a message's `tried` and `via`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.leg.channel.as_str(), self.provider)
    }

    /// The message as this step sends it (its channel, recipient and content).
    pub fn message(&self, message: &Message) -> Message {
        let mut m = message.clone();
        m.channel = self.leg.channel;
        m.to = self.leg.to.clone();
        m.content = self.leg.content.clone();
        m
    }
}

/// A provider that can serve one leg for the app, as the registry describes it.
#[derive(Debug, Clone)]
pub struct Candidate<P> {
    pub provider: &'static str,
    /// The app's account id at this provider for the leg's recipient.
    pub account_id: String,
    pub rate: Option<Rate>,
    pub ambiguity: Ambiguity,
    pub handle: P,
}

/// The entry of a message's `tried` (and `spent`) that gives up a whole channel, whatever
/// providers serve it (`sms:*`): written when a failed receipt leaves the channel.
pub fn whole_channel(channel: Channel) -> String {
    format!("{}:*", channel.as_str())
}

/// The (channel, provider) steps to try, in order: the message's channel first, then
/// the route's fallback channels it has recipients for; per channel the providers
/// `candidates` names (the route's list, else the app's order); minus those in `tried`
/// and the channels given up whole.
pub fn build<P>(
    message: &Message,
    route: &Route,
    mut candidates: impl FnMut(&Alternate, Option<&[String]>) -> Vec<Candidate<P>>,
) -> Vec<Step<P>> {
    let available: Vec<Channel> = message.alternates.iter().map(|a| a.channel).collect();
    let mut steps = Vec::new();
    for channel in route.legs(message.channel, &available) {
        if message.tried.contains(&whole_channel(channel)) {
            continue;
        }
        let leg = if channel == message.channel {
            Alternate {
                channel,
                to: message.to.clone(),
                content: message.content.clone(),
            }
        } else {
            match message.alternates.iter().find(|a| a.channel == channel) {
                Some(a) => a.clone(),
                None => continue,
            }
        };
        let leg = Arc::new(leg);
        let listed = route.providers.get(&channel).map(Vec::as_slice);
        for c in candidates(&leg, listed) {
            let step = Step {
                account: format!("{}.{}", c.provider, c.account_id),
                leg: leg.clone(),
                provider: c.provider,
                rate: c.rate,
                ambiguity: c.ambiguity,
                handle: c.handle,
            };
            if !message.tried.contains(&step.id()) {
                steps.push(step);
            }
        }
    }
    steps
}
