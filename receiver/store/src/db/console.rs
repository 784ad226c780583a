//! The web console's accounts in the management database (migration
//! `0008_console.sql`): customers, users with roles, sessions, API tokens,
//! and the customer-scoped lists the console shows.
//!
//! Secrets are never stored: passwords as Argon2id PHC strings, session and
//! token secrets as their blake3. Scoping lives here, in the queries: every
//! list and lookup takes a [`Scope`], so that a page cannot forget it.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, OptionalExtension, Row};

use super::Db;

/// Failed logins in a row that lock an account...
pub const LOCKOUT_AFTER: i64 = 5;
/// ... for this many seconds.
pub const LOCKOUT_SECS: i64 = 15 * 60;
/// A session unused this long ends.
pub const SESSION_IDLE_SECS: i64 = 30 * 60;
/// A session ends this long after sign-in whatever its use.
pub const SESSION_MAX_SECS: i64 = 12 * 3600;
/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

/// What a user may do; provider admins belong to no customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    CustomerAdmin,
    ProviderAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::CustomerAdmin => "customer-admin",
            Role::ProviderAdmin => "provider-admin",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Role> {
        Ok(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "customer-admin" => Role::CustomerAdmin,
            "provider-admin" => Role::ProviderAdmin,
            _ => anyhow::bail!("no role {s:?}: viewer, operator, customer-admin or provider-admin"),
        })
    }
}

/// Which customers' objects a caller may see: all (provider staff) or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Provider,
    Customer(i64),
}

impl Scope {
    /// The SQL condition keeping `column`'s rows of this scope, with the
    /// customer id bound to `param` (NULL for the provider). Written per
    /// scope rather than as `(param IS NULL OR column = param)`, which
    /// SQLite cannot answer from an index on `column`.
    pub fn clause(self, column: &str, param: &str) -> String {
        match self {
            Scope::Provider => format!("{param} IS NULL"),
            Scope::Customer(_) => format!("{column} = {param}"),
        }
    }

    /// The customer id to filter on; `None`: every customer.
    pub fn customer(self) -> Option<i64> {
        match self {
            Scope::Provider => None,
            Scope::Customer(id) => Some(id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Customer {
    #[serde(skip)]
    pub id: i64,
    #[serde(rename = "id")]
    pub public_id: String,
    pub name: String,
    pub email: String,
    pub quota_bytes: Option<i64>,
    pub quota_machines: Option<i64>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub public_id: String,
    pub login: String,
    pub customer_id: Option<i64>,
    pub role: Role,
    pub has_totp: bool,
    pub created_at: String,
}

impl User {
    pub fn scope(&self) -> Scope {
        match self.customer_id {
            None => Scope::Provider,
            Some(c) => Scope::Customer(c),
        }
    }
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf: String,
    /// The second factor was given (or the user has none).
    pub verified: bool,
}

/// A user as the Users page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRow {
    #[serde(rename = "id")]
    pub public_id: String,
    pub login: String,
    pub role: &'static str,
    pub second_factor: bool,
    /// Locked by failed sign-ins until then (unix seconds), if now.
    pub locked_until: Option<i64>,
    pub created_at: String,
}

/// An API token as its owner's Account page lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    #[serde(rename = "id")]
    pub public_id: String,
    pub name: String,
    pub scope: String,
    pub created_at: String,
    pub last_used: Option<String>,
}

/// What a sign-in attempt came to. Unknown logins and wrong passwords are
/// one answer, so that a login form does not tell which accounts exist.
#[derive(Debug)]
pub enum Login {
    Ok(User),
    Refused,
    /// Too many failures in a row: refused without checking until then
    /// (unix seconds).
    Locked {
        until: i64,
    },
}

/// A machine as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MachineRow {
    #[serde(rename = "id")]
    pub public_id: String,
    pub name: String,
    pub customer: Option<String>,
    pub mac: Option<String>,
    pub ip: Option<String>,
    /// receiver or local.
    pub backup_style: String,
    pub notes: String,
    pub quota_bytes: Option<i64>,
    pub created_at: String,
}

const MACHINE_COLUMNS: &str =
    "m.public_id, m.name, c.name, m.mac, m.ip, m.backup_style, m.notes, m.quota_bytes, m.created_at";

fn machine_of(r: &Row<'_>) -> rusqlite::Result<MachineRow> {
    Ok(MachineRow {
        public_id: r.get(0)?,
        name: r.get(1)?,
        customer: r.get(2)?,
        mac: r.get(3)?,
        ip: r.get(4)?,
        backup_style: r.get(5)?,
        notes: r.get(6)?,
        quota_bytes: r.get(7)?,
        created_at: r.get(8)?,
    })
}

/// An audit entry as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub machine: Option<String>,
    pub event: String,
    pub detail: String,
    pub actor: String,
}

/// A disk image as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRow {
    pub machine: String,
    /// The machine's URL id.
    pub machine_id: String,
    pub name: String,
    pub disk: String,
    pub disk_size: i64,
    pub image_bytes: i64,
    pub stored_bytes: i64,
    pub created_at: String,
}

/// An imaging job as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    pub machine: String,
    pub machine_id: String,
    pub kind: String,
    pub image: String,
    pub state: String,
    pub done_bytes: i64,
    pub total_bytes: i64,
    pub message: String,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// One page of a list, and how many match in all.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
}

/// A random id for URLs: 96 bits, hex.
pub fn public_id() -> String {
    hex(&random::<12>())
}

/// A random secret (session cookie, API token): 256 bits, hex.
pub fn new_secret() -> String {
    hex(&random::<32>())
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the kernel's random source failed");
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn secret_hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes: OWASP's
/// recommendation).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    if password.chars().count() < MIN_PASSWORD {
        anyhow::bail!("a password needs at least {MIN_PASSWORD} characters");
    }
    let salt = SaltString::encode_b64(&random::<16>()).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

fn password_matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Verified against when the login does not exist, so that an unknown login
/// takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password never matched").expect("hashing a constant"))
}

const USER_COLUMNS: &str = "id, public_id, login, customer_id, role, totp_secret IS NOT NULL, created_at";

fn user_of(r: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = r.get(4)?;
    Ok(User {
        id: r.get(0)?,
        public_id: r.get(1)?,
        login: r.get(2)?,
        customer_id: r.get(3)?,
        role: Role::parse(&role).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into_boxed_dyn_error())
        })?,
        has_totp: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const CUSTOMER_COLUMNS: &str = "id, public_id, name, email, quota_bytes, quota_machines, created_at";

fn customer_of(r: &Row<'_>) -> rusqlite::Result<Customer> {
    Ok(Customer {
        id: r.get(0)?,
        public_id: r.get(1)?,
        name: r.get(2)?,
        email: r.get(3)?,
        quota_bytes: r.get(4)?,
        quota_machines: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// `%text%` for LIKE, with LIKE's own characters taken literally.
fn like_pattern(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

impl Db {
    /// Registers a customer (audited, as done by `actor`).
    pub fn add_customer(&mut self, name: &str, email: &str, actor: &str) -> anyhow::Result<Customer> {
        let tx = self.write()?;
        let c = insert_customer(&tx, name, email, actor)?;
        tx.commit()?;
        Ok(c)
    }

    /// Registers a customer and its first administrator, both or neither.
    pub fn add_customer_with_admin(
        &mut self,
        name: &str,
        email: &str,
        admin_login: &str,
        admin_password: &str,
        actor: &str,
    ) -> anyhow::Result<Customer> {
        let hash = hash_password(admin_password)?;
        let tx = self.write()?;
        let c = insert_customer(&tx, name, email, actor)?;
        insert_user(&tx, admin_login, &hash, Some(c.id), Role::CustomerAdmin, actor)?;
        tx.commit()?;
        Ok(c)
    }

    /// The customer with this URL id, if `scope` may see it.
    pub fn customer(&self, scope: Scope, public_id: &str) -> anyhow::Result<Option<Customer>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE public_id = ?1 AND (?2 IS NULL OR id = ?2)"),
                params![public_id, scope.customer()],
                customer_of,
            )
            .optional()?)
    }

    pub fn customer_by_name(&self, name: &str) -> anyhow::Result<Option<Customer>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE name = ?1"), [name], customer_of)
            .optional()?)
    }

    /// Sets how many machines a customer may register (`None`: no limit).
    pub fn set_customer_machine_quota(&mut self, id: i64, machines: Option<i64>, actor: &str) -> anyhow::Result<()> {
        self.conn.execute("UPDATE customers SET quota_machines = ?2 WHERE id = ?1", params![id, machines])?;
        let what = machines.map_or("no limit".to_string(), |n| format!("{n} machines"));
        audit_by(&self.conn, Some(id), None, actor, "customer quota set", &what)?;
        Ok(())
    }

    pub fn customer_by_id(&self, id: i64) -> anyhow::Result<Option<Customer>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?1"), [id], customer_of)
            .optional()?)
    }

    /// Customers whose name holds `search`, by name.
    pub fn customers_page(
        &self,
        scope: Scope,
        search: &str,
        offset: i64,
        limit: i64,
    ) -> anyhow::Result<Page<Customer>> {
        let pattern = like_pattern(search);
        let filter = "(?1 IS NULL OR id = ?1) AND name LIKE ?2 ESCAPE '\\'";
        let total = self.conn.query_row(
            &format!("SELECT count(*) FROM customers WHERE {filter}"),
            params![scope.customer(), pattern],
            |r| r.get(0),
        )?;
        let mut st = self.conn.prepare(&format!(
            "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE {filter} ORDER BY name LIMIT ?3 OFFSET ?4"
        ))?;
        let items =
            st.query_map(params![scope.customer(), pattern, limit, offset], customer_of)?.collect::<Result<_, _>>()?;
        Ok(Page { items, total, offset, limit })
    }

    /// Adds a user; `customer` is `None` only for provider admins.
    pub fn add_user(
        &mut self,
        login: &str,
        password: &str,
        customer: Option<i64>,
        role: Role,
        actor: &str,
    ) -> anyhow::Result<User> {
        let hash = hash_password(password)?;
        let tx = self.write()?;
        let user = insert_user(&tx, login, &hash, customer, role, actor)?;
        tx.commit()?;
        Ok(user)
    }

    pub fn user_by_login(&self, login: &str) -> anyhow::Result<Option<User>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {USER_COLUMNS} FROM users WHERE login = ?1"), [login.trim()], user_of)
            .optional()?)
    }

    /// The users of `scope` (a customer's, or the provider's staff).
    pub fn users_of(&self, scope: Scope, now: i64) -> anyhow::Result<Vec<UserRow>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT public_id, login, role, totp_secret IS NOT NULL, locked_until, created_at FROM users
             WHERE {} ORDER BY login LIMIT 1000",
            match scope {
                Scope::Provider => "customer_id IS NULL AND ?1 IS NULL",
                Scope::Customer(_) => "customer_id = ?1",
            }
        ))?;
        let rows = st
            .query_map(params![scope.customer()], |r| {
                let role: String = r.get(2)?;
                let locked: i64 = r.get(4)?;
                Ok(UserRow {
                    public_id: r.get(0)?,
                    login: r.get(1)?,
                    role: Role::parse(&role).map(Role::as_str).unwrap_or("viewer"),
                    second_factor: r.get(3)?,
                    locked_until: (locked > now).then_some(locked),
                    created_at: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Removes user `public_id` of `scope` (audited by `actor`); its
    /// sessions and tokens end with it.
    pub fn remove_user(&mut self, scope: Scope, public_id: &str, actor: &User) -> anyhow::Result<String> {
        let tx = self.write()?;
        let found: Option<(i64, String, Option<i64>)> = tx
            .query_row(
                &format!(
                    "SELECT id, login, customer_id FROM users WHERE public_id = ?2 AND {}",
                    match scope {
                        Scope::Provider => "customer_id IS NULL AND ?1 IS NULL",
                        Scope::Customer(_) => "customer_id = ?1",
                    }
                ),
                params![scope.customer(), public_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((id, login, customer)) = found else { anyhow::bail!("no such user") };
        if id == actor.id {
            anyhow::bail!("you cannot remove yourself: another administrator can");
        }
        tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
        audit_by(&tx, customer, None, &actor.login, "user removed", &login)?;
        tx.commit()?;
        Ok(login)
    }

    /// `user`'s API tokens, newest first.
    pub fn api_tokens_of(&self, user: &User) -> anyhow::Result<Vec<TokenRow>> {
        let mut st = self.conn.prepare(
            "SELECT public_id, name, scope, created_at, last_used FROM api_tokens WHERE user_id = ?1 ORDER BY id DESC",
        )?;
        let rows = st
            .query_map([user.id], |r| {
                Ok(TokenRow {
                    public_id: r.get(0)?,
                    name: r.get(1)?,
                    scope: r.get(2)?,
                    created_at: r.get(3)?,
                    last_used: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Revokes one of `user`'s API tokens (audited); false if it has none
    /// by that id.
    pub fn revoke_api_token(&mut self, user: &User, public_id: &str) -> anyhow::Result<bool> {
        let name: Option<String> = self
            .conn
            .query_row(
                "DELETE FROM api_tokens WHERE user_id = ?1 AND public_id = ?2 RETURNING name",
                params![user.id, public_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(name) = &name {
            audit_by(&self.conn, user.customer_id, None, &user.login, "API token revoked", name)?;
        }
        Ok(name.is_some())
    }

    pub fn user_count(&self) -> anyhow::Result<i64> {
        Ok(self.conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
    }

    /// Checks a sign-in, counting failures and locking the account after
    /// [`LOCKOUT_AFTER`] in a row. Every outcome is audited.
    pub fn check_login(&mut self, login: &str, password: &str, now: i64, from: &str) -> anyhow::Result<Login> {
        let row: Option<(User, String, i64)> = self
            .conn
            .query_row(
                &format!("SELECT {USER_COLUMNS}, password_hash, locked_until FROM users WHERE login = ?1"),
                [login.trim()],
                |r| Ok((user_of(r)?, r.get(7)?, r.get(8)?)),
            )
            .optional()?;
        let Some((user, phc, locked_until)) = row else {
            password_matches(decoy_hash(), password);
            audit_by(&self.conn, None, None, login, "sign-in refused", &format!("unknown login, from {from}"))?;
            return Ok(Login::Refused);
        };
        if locked_until > now {
            audit_by(
                &self.conn,
                user.customer_id,
                None,
                &user.login,
                "sign-in refused",
                &format!("locked, from {from}"),
            )?;
            return Ok(Login::Locked { until: locked_until });
        }
        if password_matches(&phc, password) {
            self.conn.execute("UPDATE users SET failed_logins = 0, locked_until = 0 WHERE id = ?1", [user.id])?;
            audit_by(&self.conn, user.customer_id, None, &user.login, "signed in", &format!("from {from}"))?;
            return Ok(Login::Ok(user));
        }
        self.login_failed(&user, now, &format!("wrong password, from {from}"))
    }

    /// Counts a failed sign-in step of `user` (a wrong password or second
    /// factor), locking the account after [`LOCKOUT_AFTER`] in a row.
    pub fn login_failed(&mut self, user: &User, now: i64, why: &str) -> anyhow::Result<Login> {
        let failed: i64 = self.conn.query_row(
            "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = ?1 RETURNING failed_logins",
            [user.id],
            |r| r.get(0),
        )?;
        if failed >= LOCKOUT_AFTER {
            let until = now + LOCKOUT_SECS;
            self.conn.execute(
                "UPDATE users SET failed_logins = 0, locked_until = ?2 WHERE id = ?1",
                params![user.id, until],
            )?;
            // Whatever was signed in with the password alone ends too.
            self.conn.execute("DELETE FROM sessions WHERE user_id = ?1 AND verified = 0", [user.id])?;
            audit_by(
                &self.conn,
                user.customer_id,
                None,
                &user.login,
                "account locked",
                &format!("{failed} failed sign-ins in a row ({why}); locked for {} min", LOCKOUT_SECS / 60),
            )?;
            return Ok(Login::Locked { until });
        }
        audit_by(&self.conn, user.customer_id, None, &user.login, "sign-in refused", why)?;
        Ok(Login::Refused)
    }

    /// Changes `user`'s password if `current` is right (audited); other
    /// sessions of the user end.
    pub fn change_password(&mut self, user: &User, current: &str, new: &str, keep_session: &str) -> anyhow::Result<()> {
        let phc: String =
            self.conn.query_row("SELECT password_hash FROM users WHERE id = ?1", [user.id], |r| r.get(0))?;
        if !password_matches(&phc, current) {
            anyhow::bail!("the current password is wrong");
        }
        let hash = hash_password(new)?;
        let tx = self.write()?;
        tx.execute("UPDATE users SET password_hash = ?2 WHERE id = ?1", params![user.id, hash])?;
        tx.execute(
            "DELETE FROM sessions WHERE user_id = ?1 AND token_hash != ?2",
            params![user.id, &secret_hash(keep_session)[..]],
        )?;
        audit_by(&tx, user.customer_id, None, &user.login, "password changed", "")?;
        tx.commit()?;
        Ok(())
    }

    /// Accepts a second factor's time step once: false if that step (or a
    /// later one) was already used.
    pub fn use_totp_step(&mut self, user: &User, step: i64) -> anyhow::Result<bool> {
        let n = self.conn.execute(
            "UPDATE users SET totp_last_step = ?2, failed_logins = 0 WHERE id = ?1 AND totp_last_step < ?2",
            params![user.id, step],
        )?;
        Ok(n == 1)
    }

    /// Keeps (or with `None` drops) a second factor being set up in the
    /// session.
    pub fn set_pending_totp(&mut self, session_secret: &str, secret: Option<&[u8]>) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE sessions SET pending_totp = ?2 WHERE token_hash = ?1",
            params![&secret_hash(session_secret)[..], secret],
        )?;
        Ok(())
    }

    pub fn pending_totp(&self, session_secret: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT pending_totp FROM sessions WHERE token_hash = ?1",
                [&secret_hash(session_secret)[..]],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Opens a session for `user`: the cookie's secret (returned once) and
    /// its CSRF token.
    pub fn open_session(&mut self, user: &User, verified: bool, now: i64) -> anyhow::Result<(String, String)> {
        let (secret, csrf) = (new_secret(), new_secret());
        // Ended sessions go as new ones come: the table stays the live ones.
        self.conn.execute(
            "DELETE FROM sessions WHERE expires <= ?1 OR last_seen <= ?2",
            params![now, now - SESSION_IDLE_SECS],
        )?;
        self.conn.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf, verified, created, last_seen, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![&secret_hash(&secret)[..], user.id, csrf, verified, now, now + SESSION_MAX_SECS],
        )?;
        Ok((secret, csrf))
    }

    /// The live session of a cookie's secret, its idle timer restarted.
    pub fn session(&mut self, secret: &str, now: i64) -> anyhow::Result<Option<Session>> {
        let hash = secret_hash(secret);
        let found = self
            .conn
            .query_row(
                &format!(
                    "SELECT {}, s.csrf, s.verified FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.token_hash = ?1 AND s.expires > ?2 AND s.last_seen > ?3",
                    USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", ")
                ),
                params![&hash[..], now, now - SESSION_IDLE_SECS],
                |r| Ok(Session { user: user_of(r)?, csrf: r.get(7)?, verified: r.get(8)? }),
            )
            .optional()?;
        if found.is_some() {
            // At most once a minute: a write on every page view would
            // serialize every reader behind SQLite's write lock.
            self.conn.execute(
                "UPDATE sessions SET last_seen = ?2 WHERE token_hash = ?1 AND last_seen < ?2 - 60",
                params![&hash[..], now],
            )?;
        }
        Ok(found)
    }

    /// Marks a session's second factor given.
    pub fn verify_session(&mut self, secret: &str) -> anyhow::Result<()> {
        self.conn.execute("UPDATE sessions SET verified = 1 WHERE token_hash = ?1", [&secret_hash(secret)[..]])?;
        Ok(())
    }

    /// Ends a session (audited as a sign-out of its user).
    pub fn end_session(&mut self, secret: &str) -> anyhow::Result<()> {
        let user: Option<(Option<i64>, String)> = self
            .conn
            .query_row(
                "DELETE FROM sessions WHERE token_hash = ?1
                 RETURNING (SELECT customer_id FROM users WHERE id = user_id), (SELECT login FROM users WHERE id = user_id)",
                [&secret_hash(secret)[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((customer, login)) = user {
            audit_by(&self.conn, customer, None, &login, "signed out", "")?;
        }
        Ok(())
    }

    /// The TOTP secret of a user, if a second factor is set.
    pub fn totp_secret(&self, user: i64) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.conn.query_row("SELECT totp_secret FROM users WHERE id = ?1", [user], |r| r.get(0))?)
    }

    /// Sets (or with `None` removes) a user's second factor; audited.
    pub fn set_totp(&mut self, user: &User, secret: Option<&[u8]>) -> anyhow::Result<()> {
        self.conn.execute("UPDATE users SET totp_secret = ?2 WHERE id = ?1", params![user.id, secret])?;
        let what = if secret.is_some() { "second factor set" } else { "second factor removed" };
        audit_by(&self.conn, user.customer_id, None, &user.login, what, "")?;
        Ok(())
    }

    /// A new API token for `user`: its URL id and its secret (shown once).
    pub fn add_api_token(&mut self, user: &User, name: &str, write: bool) -> anyhow::Result<(String, String)> {
        let (id, secret) = (public_id(), format!("llt_{}", new_secret()));
        let scope = if write { "write" } else { "read" };
        self.conn.execute(
            "INSERT INTO api_tokens (public_id, user_id, name, scope, token_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, user.id, name.trim(), scope, &secret_hash(&secret)[..]],
        )?;
        audit_by(
            &self.conn,
            user.customer_id,
            None,
            &user.login,
            "API token added",
            &format!("{} ({scope})", name.trim()),
        )?;
        Ok((id, secret))
    }

    /// The user an API token acts for, and whether it may write.
    pub fn api_token(&mut self, secret: &str) -> anyhow::Result<Option<(User, bool)>> {
        let hash = secret_hash(secret);
        let found = self
            .conn
            .query_row(
                &format!(
                    "SELECT {}, t.scope FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1",
                    USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", ")
                ),
                [&hash[..]],
                |r| Ok((user_of(r)?, r.get::<_, String>(7)? == "write")),
            )
            .optional()?;
        if found.is_some() {
            // To the minute, for the same reason as sessions.
            self.conn.execute(
                "UPDATE api_tokens SET last_used = strftime('%Y-%m-%dT%H:%M:00Z', 'now')
                 WHERE token_hash = ?1 AND last_used IS NOT strftime('%Y-%m-%dT%H:%M:00Z', 'now')",
                [&hash[..]],
            )?;
        }
        Ok(found)
    }

    /// Appends to the audit trail an entry made by console user `actor`.
    pub fn audit_by(
        &self,
        customer: Option<i64>,
        machine: Option<&str>,
        actor: &str,
        event: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        audit_by(&self.conn, customer, machine, actor, event, detail)
    }

    /// Gives machine `name` to `customer` (audited).
    pub fn set_machine_customer(&mut self, name: &str, customer: Option<i64>, actor: &str) -> anyhow::Result<()> {
        let tx = self.write()?;
        let n = tx.execute("UPDATE machines SET customer_id = ?2 WHERE name = ?1", params![name, customer])?;
        if n == 0 {
            anyhow::bail!("no machine {name} is registered (see `lifeline-receiver machine list`)");
        }
        let to = match customer {
            Some(c) => tx.query_row("SELECT name FROM customers WHERE id = ?1", [c], |r| r.get::<_, String>(0))?,
            None => "the provider".into(),
        };
        audit_by(&tx, customer, Some(name), actor, "machine given", &format!("to {to}"))?;
        tx.commit()?;
        Ok(())
    }

    /// Machines whose name holds `search`, by name.
    pub fn machines_page(
        &self,
        scope: Scope,
        search: &str,
        offset: i64,
        limit: i64,
    ) -> anyhow::Result<Page<MachineRow>> {
        let pattern = like_pattern(search);
        let filter = format!("{} AND m.name LIKE ?2 ESCAPE '\\'", scope.clause("m.customer_id", "?1"));
        let total = self.conn.query_row(
            &format!("SELECT count(*) FROM machines m WHERE {filter}"),
            params![scope.customer(), pattern],
            |r| r.get(0),
        )?;
        let mut st = self.conn.prepare(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines m LEFT JOIN customers c ON c.id = m.customer_id
             WHERE {filter} ORDER BY m.name LIMIT ?3 OFFSET ?4"
        ))?;
        let items =
            st.query_map(params![scope.customer(), pattern, limit, offset], machine_of)?.collect::<Result<_, _>>()?;
        Ok(Page { items, total, offset, limit })
    }

    /// The machine with this URL id, if `scope` may see it.
    pub fn machine(&self, scope: Scope, public_id: &str) -> anyhow::Result<Option<MachineRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines m LEFT JOIN customers c ON c.id = m.customer_id
                     WHERE m.public_id = ?1 AND (?2 IS NULL OR m.customer_id = ?2)"
                ),
                params![public_id, scope.customer()],
                machine_of,
            )
            .optional()?)
    }

    /// Disk images of machines whose name holds `search` (or whose image
    /// name does), newest first. The page's ids are chosen from indexes
    /// alone, then its rows read: a customer's deep page sorts ids, not
    /// rows (7 ms to 1 ms on 2,000 images).
    pub fn images_page(&self, scope: Scope, search: &str, offset: i64, limit: i64) -> anyhow::Result<Page<ImageRow>> {
        let pattern = like_pattern(search);
        let filter = format!(
            "{} AND (?2 = '' OR i.machine LIKE ?3 ESCAPE '\\' OR i.name LIKE ?3 ESCAPE '\\')",
            scope.clause("m.customer_id", "?1")
        );
        let total = if scope == Scope::Provider && search.is_empty() {
            self.conn.query_row("SELECT count(*) FROM images", [], |r| r.get(0))?
        } else {
            self.conn.query_row(
                &format!("SELECT count(*) FROM images i JOIN machines m ON m.name = i.machine WHERE {filter}"),
                params![scope.customer(), search, pattern],
                |r| r.get(0),
            )?
        };
        let mut st = self.conn.prepare(&format!(
            "SELECT i.machine, m.public_id, i.name, i.disk, i.disk_size, i.image_bytes, i.stored_bytes, i.created_at
             FROM images i JOIN machines m ON m.name = i.machine
             WHERE i.id IN (SELECT i.id FROM images i JOIN machines m ON m.name = i.machine WHERE {filter}
                            ORDER BY i.id DESC LIMIT ?4 OFFSET ?5)
             ORDER BY i.id DESC"
        ))?;
        let items = st
            .query_map(params![scope.customer(), search, pattern, limit, offset], |r| {
                Ok(ImageRow {
                    machine: r.get(0)?,
                    machine_id: r.get(1)?,
                    name: r.get(2)?,
                    disk: r.get(3)?,
                    disk_size: r.get(4)?,
                    image_bytes: r.get(5)?,
                    stored_bytes: r.get(6)?,
                    created_at: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Page { items, total, offset, limit })
    }

    /// Imaging jobs, newest first.
    pub fn jobs_page(&self, scope: Scope, search: &str, offset: i64, limit: i64) -> anyhow::Result<Page<JobRow>> {
        let pattern = like_pattern(search);
        let filter = format!("{} AND (?2 = '' OR j.machine LIKE ?3 ESCAPE '\\')", scope.clause("m.customer_id", "?1"));
        let total = if scope == Scope::Provider && search.is_empty() {
            // Every job: no join to count through.
            self.conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))?
        } else {
            self.conn.query_row(
                &format!("SELECT count(*) FROM jobs j JOIN machines m ON m.name = j.machine WHERE {filter}"),
                params![scope.customer(), search, pattern],
                |r| r.get(0),
            )?
        };
        let mut st = self.conn.prepare(&format!(
            "SELECT j.id, j.machine, m.public_id, j.kind, j.image, j.state, j.done_bytes, j.total_bytes, j.message,
                    j.started_at, j.updated_at, j.finished_at
             FROM jobs j JOIN machines m ON m.name = j.machine
             WHERE j.id IN (SELECT j.id FROM jobs j JOIN machines m ON m.name = j.machine WHERE {filter}
                            ORDER BY j.id DESC LIMIT ?4 OFFSET ?5)
             ORDER BY j.id DESC"
        ))?;
        let items = st
            .query_map(params![scope.customer(), search, pattern, limit, offset], |r| {
                Ok(JobRow {
                    id: r.get(0)?,
                    machine: r.get(1)?,
                    machine_id: r.get(2)?,
                    kind: r.get(3)?,
                    image: r.get(4)?,
                    state: r.get(5)?,
                    done_bytes: r.get(6)?,
                    total_bytes: r.get(7)?,
                    message: r.get(8)?,
                    started_at: r.get(9)?,
                    updated_at: r.get(10)?,
                    finished_at: r.get(11)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Page { items, total, offset, limit })
    }

    /// Audit entries, newest first, older than `before` (an entry id; `None`:
    /// the newest), whose event, machine or detail holds `search`. Paged by
    /// id rather than by offset so that the millionth entry costs what the
    /// first does.
    pub fn audit_page(
        &self,
        scope: Scope,
        search: &str,
        before: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditRow>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT id, at, machine, event, detail, actor FROM audit
             WHERE {} AND id < ?2
               AND (?3 = '' OR event LIKE ?4 ESCAPE '\\' OR machine LIKE ?4 ESCAPE '\\' OR detail LIKE ?4 ESCAPE '\\'
                    OR actor LIKE ?4 ESCAPE '\\')
             ORDER BY id DESC LIMIT ?5",
            scope.clause("customer_id", "?1")
        ))?;
        let rows = st
            .query_map(
                params![scope.customer(), before.unwrap_or(i64::MAX), search, like_pattern(search), limit],
                |r| {
                    Ok(AuditRow {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        machine: r.get(2)?,
                        event: r.get(3)?,
                        detail: r.get(4)?,
                        actor: r.get(5)?,
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

fn insert_customer(conn: &rusqlite::Connection, name: &str, email: &str, actor: &str) -> anyhow::Result<Customer> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        anyhow::bail!("a customer's name is 1 to 200 characters");
    }
    let taken: bool = conn.query_row("SELECT count(*) FROM customers WHERE name = ?1", [name], |r| r.get(0))?;
    if taken {
        anyhow::bail!("a customer named {name:?} exists already");
    }
    conn.execute(
        "INSERT INTO customers (public_id, name, email) VALUES (?1, ?2, ?3)",
        params![public_id(), name, email.trim()],
    )?;
    let id = conn.last_insert_rowid();
    audit_by(conn, Some(id), None, actor, "customer added", name)?;
    Ok(conn.query_row(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?1"), [id], customer_of)?)
}

/// `hash`: the password's Argon2id PHC string ([`hash_password`]).
fn insert_user(
    conn: &rusqlite::Connection,
    login: &str,
    hash: &str,
    customer: Option<i64>,
    role: Role,
    actor: &str,
) -> anyhow::Result<User> {
    let login = login.trim();
    if login.is_empty() || login.len() > 254 || login.chars().any(char::is_whitespace) {
        anyhow::bail!("a login is 1 to 254 characters without spaces (an email address, say)");
    }
    if (role == Role::ProviderAdmin) != customer.is_none() {
        anyhow::bail!("provider admins belong to no customer, every other user to one");
    }
    let taken: bool = conn.query_row("SELECT count(*) FROM users WHERE login = ?1", [login], |r| r.get(0))?;
    if taken {
        anyhow::bail!("the login {login:?} is taken");
    }
    conn.execute(
        "INSERT INTO users (public_id, login, customer_id, role, password_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![public_id(), login, customer, role.as_str(), hash],
    )?;
    let id = conn.last_insert_rowid();
    audit_by(conn, customer, None, actor, "user added", &format!("{login} ({})", role.as_str()))?;
    Ok(conn.query_row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"), [id], user_of)?)
}

/// An audit entry made by a console user (`actor`), for `customer`.
pub(crate) fn audit_by(
    conn: &rusqlite::Connection,
    customer: Option<i64>,
    machine: Option<&str>,
    actor: &str,
    event: &str,
    detail: &str,
) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO audit (machine, event, detail, customer_id, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![machine, event, detail, customer, actor],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(d.path()).unwrap();
        (d, db)
    }

    #[test]
    fn five_wrong_passwords_lock_the_account_even_against_the_right_one() {
        let (_d, mut db) = db();
        let c = db.add_customer("Acme", "it@acme.test", "test").unwrap();
        db.add_user("ann@acme.test", "correct horse battery", Some(c.id), Role::CustomerAdmin, "test").unwrap();
        let now = 1_000_000;
        for i in 0..LOCKOUT_AFTER - 1 {
            assert!(matches!(db.check_login("ann@acme.test", "wrong", now + i, "t").unwrap(), Login::Refused));
        }
        assert!(matches!(
            db.check_login("ann@acme.test", "wrong", now + 10, "t").unwrap(),
            Login::Locked { until } if until == now + 10 + LOCKOUT_SECS
        ));
        assert!(matches!(
            db.check_login("ann@acme.test", "correct horse battery", now + 11, "t").unwrap(),
            Login::Locked { .. }
        ));
        let later = now + 11 + LOCKOUT_SECS;
        assert!(matches!(db.check_login("ANN@acme.test", "correct horse battery", later, "t").unwrap(), Login::Ok(_)));
        assert!(matches!(db.check_login("nobody@acme.test", "x", later, "t").unwrap(), Login::Refused));
    }

    #[test]
    fn sessions_end_when_idle_and_scopes_hide_other_customers() {
        let (_d, mut db) = db();
        let a = db.add_customer("A", "", "t").unwrap();
        let b = db.add_customer("B", "", "t").unwrap();
        let ua = db.add_user("a@a.test", "aaaaaaaaaaaaaaaa", Some(a.id), Role::Viewer, "t").unwrap();
        let (secret, csrf) = db.open_session(&ua, true, 100).unwrap();
        let s = db.session(&secret, 100 + SESSION_IDLE_SECS - 1).unwrap().unwrap();
        assert_eq!((s.user.id, s.csrf.as_str()), (ua.id, csrf.as_str()));
        assert!(db.session(&secret, 100 + 2 * SESSION_IDLE_SECS).unwrap().is_none());
        assert!(db.session("not a secret", 100).unwrap().is_none());

        db.add_machine(&lifeline_core::credential::MachineName::new("ma").unwrap(), &[1; 32], "").unwrap();
        db.add_machine(&lifeline_core::credential::MachineName::new("mb").unwrap(), &[2; 32], "").unwrap();
        db.set_machine_customer("ma", Some(a.id), "t").unwrap();
        db.set_machine_customer("mb", Some(b.id), "t").unwrap();
        let seen = db.machines_page(ua.scope(), "", 0, 50).unwrap();
        assert_eq!(seen.items.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["ma"]);
        let mb = db.machines_page(Scope::Provider, "mb", 0, 50).unwrap().items.remove(0);
        assert!(db.machine(ua.scope(), &mb.public_id).unwrap().is_none());
        assert!(db.machine(Scope::Provider, &mb.public_id).unwrap().is_some());
        assert!(db.customer(ua.scope(), &b.public_id).unwrap().is_none());
        let audit = db.audit_page(ua.scope(), "", None, 100).unwrap();
        assert!(audit.iter().all(|e| e.machine.as_deref() != Some("mb")), "{audit:?}");
        assert!(audit.iter().any(|e| e.machine.as_deref() == Some("ma")), "{audit:?}");
    }

    #[test]
    fn api_tokens_act_for_their_user_and_are_stored_hashed() {
        let (_d, mut db) = db();
        let admin =
            db.add_user("root@provider.test", "a long enough password", None, Role::ProviderAdmin, "t").unwrap();
        let (_, secret) = db.add_api_token(&admin, "ci", false).unwrap();
        let (u, write) = db.api_token(&secret).unwrap().unwrap();
        assert_eq!((u.id, write), (admin.id, false));
        assert!(db.api_token("llt_0000").unwrap().is_none());
        let stored: i64 = db
            .conn
            .query_row("SELECT count(*) FROM api_tokens WHERE token_hash = ?1", [secret.as_bytes()], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0);
        assert!(db.add_user("x@y.test", "short", None, Role::ProviderAdmin, "t").is_err());
        assert!(db.add_user("x@y.test", "long enough password", None, Role::Viewer, "t").is_err());
    }
}
