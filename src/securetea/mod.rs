//! OWASP SecureTea's notification relay, spoken by edgebus
//! (`[compat.securetea]`).
//!
//! SecureTea-Core calls `GET /notifs?msg=S…` (its ServerApp's route) with a
//! one-letter level in front of the text; the Angular GUI listens on
//! Socket.IO for `newmessage {message}` and picks the toast from the first
//! letter: `W` warning, `S` success, anything else error. Here the core's
//! call becomes an ordinary notification event, and every notification
//! event, whoever published it, goes to the GUI with the letter it reads.

pub mod socketio;

/// The source a core's notification is published under
/// (`notifications/securetea`).
pub const SOURCE: &str = "securetea";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgError {
    #[error("msg is missing: send ?msg=<S|W|E|I><text>")]
    Missing,
    #[error("msg must start with S (success), W (warning), E (error) or I (info), then the text")]
    UnknownLevel,
    #[error("msg has a level letter but no text")]
    Empty,
}

/// `S…` / `W…` / `E…` / `I…` → (edgebus level, text). `S` is what the core
/// sends for its info lines; `I` is accepted for tools that mean info.
pub fn parse_msg(msg: Option<&str>) -> Result<(&'static str, &str), MsgError> {
    let msg = msg.ok_or(MsgError::Missing)?;
    let mut chars = msg.chars();
    let level = match chars.next() {
        None => return Err(MsgError::Missing),
        Some('S') => "success",
        Some('W') => "warning",
        Some('E') => "error",
        Some('I') => "info",
        Some(_) => return Err(MsgError::UnknownLevel),
    };
    let text = chars.as_str();
    if text.is_empty() {
        return Err(MsgError::Empty);
    }
    Ok((level, text))
}

/// The GUI's `message`: its level letter, then the text. The GUI knows only
/// `W` and `S` and shows anything else as an error, so info goes as `S`,
/// which is also what the core sends for info.
pub fn gui_message(level: &str, text: &str) -> String {
    let letter = match level {
        "warning" => 'W',
        "error" => 'E',
        _ => 'S',
    };
    let mut out = String::with_capacity(text.len() + 1);
    out.push(letter);
    out.push_str(text);
    out
}

/// The GUI's `message` for a notification event's envelope
/// (`{…,"payload":{"level","message",…}}`); `None` for anything else.
pub fn gui_message_of(envelope: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        payload: Payload<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        level: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        message: std::borrow::Cow<'a, str>,
    }
    let env: Envelope<'_> = serde_json::from_str(envelope).ok()?;
    Some(gui_message(&env.payload.level, &env.payload.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_letter_is_the_level_and_the_rest_the_text() {
        assert_eq!(parse_msg(Some("Whello")), Ok(("warning", "hello")));
        assert_eq!(parse_msg(Some("SStarted")), Ok(("success", "Started")));
        assert_eq!(parse_msg(Some("Edisk é")), Ok(("error", "disk é")));
        assert_eq!(parse_msg(Some("Iinfo")), Ok(("info", "info")));
        assert_eq!(parse_msg(None), Err(MsgError::Missing));
        assert_eq!(parse_msg(Some("")), Err(MsgError::Missing));
        assert_eq!(parse_msg(Some("W")), Err(MsgError::Empty));
        assert_eq!(parse_msg(Some("whello")), Err(MsgError::UnknownLevel));
        assert_eq!(parse_msg(Some("éhello")), Err(MsgError::UnknownLevel));
    }

    #[test]
    fn the_gui_reads_the_letter_it_knows() {
        assert_eq!(gui_message("warning", "w"), "Ww");
        assert_eq!(gui_message("success", "s"), "Ss");
        assert_eq!(gui_message("info", "i"), "Si");
        assert_eq!(gui_message("error", "e"), "Ee");
        let envelope = r#"{"id":"a-1","topic":"notifications/ci","event":"notification","ts":1,"payload":{"level":"warning","message":"disk \"full\"","source":"ci"}}"#;
        assert_eq!(gui_message_of(envelope).as_deref(), Some("Wdisk \"full\""));
        assert_eq!(gui_message_of(r#"{"payload":{"cpu":1}}"#), None);
    }
}
