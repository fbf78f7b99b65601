//! Messages as JSON: the stable machine-readable tree used by `causeway parse --json`, the
//! HTTP destination's `format = "json"` and the admin API.
//!
//! Every node has a `path` (`PID-3[1].1`); a leaf has `value` (unescaped, decoded text) or
//! `null: true` for the HL7 null `""`; other nodes have `children`. Empty parts are left out.

use causeway_message::{Charset, DecodeError, Message, ParseError, Presence, TextDecoding, Value};
use serde_json::{Value as Json, json};

/// Text of a value: unescaped and decoded. Bytes that do not decode are shown as `\xHH`
/// (never guessed), and the decoding error is returned beside the text.
pub fn text(
    decoding: &TextDecoding,
    charset: Charset,
    value: &Value<'_>,
) -> (String, Option<DecodeError>) {
    let unescaped = value.unescaped();
    match decoding.decode(charset, &unescaped) {
        Ok(s) => (s.into_owned(), None),
        Err(e) => {
            let mut s = String::new();
            for chunk in unescaped.utf8_chunks() {
                s.push_str(chunk.valid());
                for b in chunk.invalid() {
                    s.push_str(&format!("\\x{b:02X}"));
                }
            }
            (s, Some(e))
        }
    }
}

/// The segment's name in paths: `OBX[3]` for the third OBX, `PID` for the first.
pub fn segment_label(id: &[u8], occurrence: usize) -> String {
    let id = String::from_utf8_lossy(id);
    if occurrence > 1 {
        format!("{id}[{occurrence}]")
    } else {
        id.into_owned()
    }
}

fn node(
    path: String,
    v: &Value<'_>,
    text: &dyn Fn(&Value<'_>) -> String,
    children: impl FnOnce() -> Vec<Json>,
) -> Json {
    if v.presence() == Presence::Null {
        return json!({ "path": path, "null": true });
    }
    if v.has_children() {
        json!({ "path": path, "children": children() })
    } else {
        json!({ "path": path, "value": text(v) })
    }
}

/// The segments of `msg` as a JSON array.
pub fn segments_json(
    msg: &Message<'_>,
    offset: usize,
    text: &dyn Fn(&Value<'_>) -> String,
) -> Vec<Json> {
    let mut seen: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    msg.segments()
        .map(|seg| {
            let occurrence = {
                let n = seen.entry(seg.id().to_vec()).or_default();
                *n += 1;
                *n
            };
            let name = segment_label(seg.id(), occurrence);
            let fields: Vec<Json> = seg
                .fields()
                .enumerate()
                .filter(|(_, f)| !f.is_empty())
                .map(|(i, field)| {
                    let path = format!("{name}-{}", i + 1);
                    node(path.clone(), &field, text, || {
                        field
                            .children()
                            .enumerate()
                            .filter(|(_, r)| !r.is_empty())
                            .map(|(r, rep)| {
                                let rpath = format!("{path}[{}]", r + 1);
                                node(rpath.clone(), &rep, text, || {
                                    rep.children()
                                        .enumerate()
                                        .filter(|(_, c)| !c.is_empty())
                                        .map(|(c, comp)| {
                                            let cpath = format!("{rpath}.{}", c + 1);
                                            node(cpath.clone(), &comp, text, || {
                                                comp.children()
                                                    .enumerate()
                                                    .filter(|(_, s)| !s.is_empty())
                                                    .map(|(s, sub)| node(format!("{cpath}.{}", s + 1), &sub, text, Vec::new))
                                                    .collect()
                                            })
                                        })
                                        .collect()
                                })
                            })
                            .collect()
                    })
                })
                .collect();
            json!({ "id": String::from_utf8_lossy(seg.id()), "name": name, "offset": offset + seg.offset(), "fields": fields })
        })
        .collect()
}

/// A whole message as JSON, text decoded per MSH-18 (UTF-8 when undeclared).
pub fn message_json(raw: &[u8]) -> Result<Json, ParseError> {
    let msg = Message::parse(raw)?;
    let decoding = TextDecoding::default();
    let charset = decoding.choose(msg.declared_charset().ok().flatten());
    let text = |v: &Value<'_>| self::text(&decoding, charset, v).0;
    let d = msg.delimiters();
    Ok(json!({
        "control_id": msg.control_id().map(|b| String::from_utf8_lossy(b).into_owned()),
        "delimiters": format!("{}{}", char::from(d.field), String::from_utf8_lossy(&d.encoding_characters())),
        "charset": charset.hl7_name(),
        "segments": segments_json(&msg, 0, &text),
    }))
}
