//! `lifeline-receiver customer ...`: the provider's customers from the
//! command line, on the same database functions the console's API uses.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use lifeline_store::Db;

#[derive(Subcommand, Debug)]
pub enum CustomerCmd {
    /// Add a customer and its first administrator (who signs in to the
    /// console and registers its PCs).
    Add {
        name: String,
        /// The customer's contact address (boot media notices go there).
        #[arg(long, default_value = "")]
        email: String,
        /// The login of its first administrator (an email address, say).
        #[arg(long)]
        admin: String,
        /// The administrator's first password (first line); without it one
        /// is made and printed.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// How many machines it may register (none: no limit).
        #[arg(long)]
        max_machines: Option<i64>,
    },
    /// List the customers.
    List,
    /// Give a machine to a customer (its users then see it), or with
    /// --provider back to the provider.
    Give {
        machine: String,
        #[arg(long, required_unless_present = "provider")]
        customer: Option<String>,
        #[arg(long)]
        provider: bool,
    },
}

/// The audit trail's "who" for the command line.
const ACTOR: &str = "command line";

pub fn run(store: &Path, cmd: CustomerCmd) -> anyhow::Result<()> {
    let mut db = Db::open(store)?;
    match cmd {
        CustomerCmd::Add { name, email, admin, password_file, max_machines } => {
            let (password, made) = match password_file {
                Some(f) => (
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    false,
                ),
                None => (lifeline_console::setup::readable_password(), true),
            };
            let c = db.add_customer_with_admin(&name, &email, &admin, &password, ACTOR)?;
            if max_machines.is_some() {
                db.set_customer_machine_quota(c.id, max_machines, ACTOR)?;
            }
            println!("customer {} added (id {})", c.name, c.public_id);
            if made {
                println!(
                    "  its administrator signs in to the console as {admin} / {password}  (tell them to change it)"
                );
            } else {
                println!("  its administrator signs in to the console as {admin}");
            }
        }
        CustomerCmd::List => {
            let page = db.customers_page(lifeline_store::db::console::Scope::Provider, "", 0, i64::MAX)?;
            for c in page.items {
                let quota = c.quota_machines.map_or("no limit".into(), |n| format!("at most {n} machines"));
                println!("{:<30} {:<30} {quota}  since {}", c.name, c.email, c.created_at);
            }
        }
        CustomerCmd::Give { machine, customer, provider } => {
            let to = match (customer, provider) {
                (Some(name), false) => Some(
                    db.customer_by_name(&name)?
                        .with_context(|| format!("no customer {name:?} (see `lifeline-receiver customer list`)"))?
                        .id,
                ),
                _ => None,
            };
            db.set_machine_customer(&machine, to, ACTOR)?;
            println!("machine {machine} given");
        }
    }
    Ok(())
}
