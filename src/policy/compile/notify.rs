//! The `[notify]` section: channels, routes and their addresses.

use toml::Spanned;

use super::{Problems, lookup_name, non_empty, positive};
use crate::policy::notify::{
    Channel, ChannelKind, DEFAULT_CHANNEL_DEADLINE, DEFAULT_CHANNEL_TIMEOUT,
    DEFAULT_ESCALATE_AFTER, NotifyConfig, Routes, SmtpSecurity,
};
use crate::policy::raw::RawNotify;

pub(super) fn compile_notify(problems: &mut Problems, raw: RawNotify) -> NotifyConfig {
    let mut channels: Vec<Channel> = Vec::new();
    for raw_channel in raw.channel {
        let raw_channel = raw_channel.into_inner();
        let name_span = raw_channel.name.span();
        let name = non_empty(problems, raw_channel.name, "channel name");
        if channels.iter().any(|c| c.name == name) {
            problems.add(
                name_span,
                format!("duplicate channel \"{name}\", expected each channel once"),
            );
        }
        let kind_names = [("email", 0), ("alertmanager", 1), ("webhook", 2)];
        let Some(kind) = lookup_name(problems, &raw_channel.kind, "channel kind", &kind_names)
        else {
            continue;
        };
        let kind_span = raw_channel.kind.span();
        let needs = |problems: &mut Problems,
                     value: Option<Spanned<String>>,
                     key: &str|
         -> Option<Spanned<String>> {
            if value.is_none() {
                problems.add(
                    kind_span.clone(),
                    format!(
                        "a channel of kind {} needs `{key}`",
                        raw_channel.kind.get_ref()
                    ),
                );
            }
            value
        };
        let kind = match kind {
            0 => {
                let server = needs(problems, raw_channel.server, "server");
                let (host, port, security) = match &server {
                    Some(server) => smtp_server(problems, server),
                    None => (String::new(), 25, SmtpSecurity::Plain),
                };
                let from = needs(problems, raw_channel.from, "from")
                    .map(|f| email_address(problems, f))
                    .unwrap_or_default();
                if raw_channel.to.is_empty() {
                    problems.add(
                        kind_span.clone(),
                        "an email channel needs `to`, expected e.g. to = [\"oncall@example.com\"]",
                    );
                }
                let to = raw_channel
                    .to
                    .into_iter()
                    .map(|t| email_address(problems, t))
                    .collect();
                let env_name = |problems: &mut Problems, value: Option<Spanned<String>>| {
                    value.map(|v| {
                        let name = v.get_ref().trim();
                        if name.is_empty() || name.contains('=') || name.starts_with("${") {
                            problems.add(v.span(), format!("\"{name}\" is not an environment variable's name, expected e.g. ROLLWATCH_SMTP_PASSWORD (the name, never the secret)"));
                        }
                        name.to_string()
                    })
                };
                let username_env = env_name(problems, raw_channel.username_env);
                let password_env = env_name(problems, raw_channel.password_env);
                // One without the other would send unauthenticated, silently.
                match (&username_env, &password_env) {
                    (Some(_), None) => problems.add(
                        kind_span.clone(),
                        "username_env is set but password_env is not: SMTP authentication needs both (or neither, for a relay that needs none)",
                    ),
                    (None, Some(_)) => problems.add(
                        kind_span.clone(),
                        "password_env is set but username_env is not: SMTP authentication needs both (or neither, for a relay that needs none)",
                    ),
                    _ => {}
                }
                ChannelKind::Email {
                    host,
                    port,
                    security,
                    from,
                    to,
                    username_env,
                    password_env,
                }
            }
            1 => ChannelKind::Alertmanager {
                url: needs(problems, raw_channel.url, "url")
                    .map(|u| http_url(problems, u).trim_end_matches('/').to_string())
                    .unwrap_or_default()
                    .into(),
            },
            _ => ChannelKind::Webhook {
                url: needs(problems, raw_channel.url, "url")
                    .map(|u| http_url(problems, u))
                    .unwrap_or_default()
                    .into(),
            },
        };
        let timeout = raw_channel.timeout.map_or(DEFAULT_CHANNEL_TIMEOUT, |t| {
            positive(problems, t, "channel timeout")
                .to_std()
                .unwrap_or(DEFAULT_CHANNEL_TIMEOUT)
        });
        let deadline = raw_channel.deadline.map_or(DEFAULT_CHANNEL_DEADLINE, |d| {
            positive(problems, d, "channel deadline")
                .to_std()
                .unwrap_or(DEFAULT_CHANNEL_DEADLINE)
        });
        channels.push(Channel {
            name,
            kind,
            timeout,
            deadline,
        });
    }
    let route = |problems: &mut Problems, names: Vec<Spanned<String>>| -> Vec<String> {
        names
            .into_iter()
            .map(|name| {
                if !channels.iter().any(|c| &c.name == name.get_ref()) {
                    let known: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
                    problems.add(
                        name.span(),
                        format!(
                            "unknown channel \"{}\", expected one of {}",
                            name.get_ref(),
                            if known.is_empty() {
                                "the [[notify.channel]] names (none defined)".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
                name.into_inner()
            })
            .collect()
    };
    let routes = Routes {
        page: route(problems, raw.page),
        notice: route(problems, raw.notice),
        escalation: route(problems, raw.escalation),
    };
    let escalate_after = raw.escalate_after.map_or(DEFAULT_ESCALATE_AFTER, |d| {
        positive(problems, d, "escalate_after")
            .to_std()
            .unwrap_or(DEFAULT_ESCALATE_AFTER)
    });
    NotifyConfig {
        channels,
        routes,
        escalate_after,
    }
}

/// `smtp://host[:port]` (plain, 25), `smtp+starttls://host[:port]` (587) or
/// `smtps://host[:port]` (465).
fn smtp_server(problems: &mut Problems, value: &Spanned<String>) -> (String, u16, SmtpSecurity) {
    let text = value.get_ref().trim();
    let schemes = [
        ("smtp://", SmtpSecurity::Plain, 25),
        ("smtp+starttls://", SmtpSecurity::StartTls, 587),
        ("smtps://", SmtpSecurity::Tls, 465),
    ];
    let Some((rest, security, default_port)) =
        schemes.iter().find_map(|(scheme, security, port)| {
            text.strip_prefix(scheme)
                .map(|rest| (rest, *security, *port))
        })
    else {
        problems.add(value.span(), format!("server \"{text}\" is not an SMTP URL, expected smtp://host:25 (plain, a local relay), smtp+starttls://host:587 or smtps://host:465"));
        return (String::new(), 25, SmtpSecurity::Plain);
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => (host, port),
            _ => {
                problems.add(
                    value.span(),
                    format!("server \"{text}\": port \"{port}\" is not a port number"),
                );
                (host, default_port)
            }
        },
        None => (rest, default_port),
    };
    if host.is_empty() || host.contains('@') || host.contains('/') {
        problems.add(value.span(), format!("server \"{text}\" has no host name (credentials go in username_env/password_env, never in the URL)"));
    }
    (host.to_string(), port, security)
}

fn email_address(problems: &mut Problems, value: Spanned<String>) -> String {
    let text = value.get_ref().trim().to_string();
    if text.parse::<lettre::Address>().is_err() && text.parse::<lettre::message::Mailbox>().is_err()
    {
        problems.add(
            value.span(),
            format!("\"{text}\" is not an email address, expected e.g. oncall@example.com"),
        );
    }
    text
}

pub(super) fn http_url(problems: &mut Problems, value: Spanned<String>) -> String {
    let url = value.get_ref().trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < "http://x".len()
    {
        problems.add(
            value.span(),
            format!("url \"{url}\" is not an http:// or https:// URL"),
        );
    }
    url.to_string()
}
