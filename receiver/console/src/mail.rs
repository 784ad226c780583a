//! Mail the console sends (boot media ready or failed), through the SMTP
//! server the provider configures (`serve --smtp-url`), by `lettre`.
//! Without one the console still shows every notice; it just mails none.

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// `url`: `smtp://HOST:PORT` (plain: a relay on this host or network),
    /// `smtp://HOST:587?tls=required` (STARTTLS) or `smtps://HOST:465`, with
    /// `USER:PASSWORD@` before the host when the server asks for a login.
    pub fn new(url: &str, from: &str) -> anyhow::Result<Mailer> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .with_context(|| "--smtp-url: smtp://HOST:PORT, smtp://HOST:587?tls=required or smtps://HOST:465")?
            .timeout(Some(std::time::Duration::from_secs(30)))
            .build();
        let from = from.parse().with_context(|| format!("--smtp-from {from:?} is not an address"))?;
        Ok(Mailer { transport, from })
    }

    pub async fn send(&self, to: &str, subject: &str, body: String) -> anyhow::Result<()> {
        let to: Mailbox = to.parse().with_context(|| format!("{to:?} is not a mail address"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to.clone())
            .subject(subject)
            .body(body)
            .context("building the message")?;
        self.transport.send(message).await.with_context(|| format!("mailing {to}"))?;
        Ok(())
    }
}
