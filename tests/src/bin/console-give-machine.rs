//! `console-give-machine STORE MACHINE CUSTOMER`: gives registered machine
//! MACHINE to the customer named CUSTOMER, in the store's management
//! database (audited as done by `console-flow-test`).
//!
//! The console's browser test (tests/console/flow.py) needs machines owned by
//! the customers it makes on the console's pages, and neither the console
//! nor `lifeline-receiver` can give a machine to a customer yet; this calls
//! what such a command will (`Db::set_machine_customer`). A running receiver
//! sees the change at once: it reads the same SQLite database.

use std::path::Path;
use std::process::ExitCode;

use lifeline_store::db::console::Scope;
use lifeline_store::Db;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, machine, customer] = args.as_slice() else {
        eprintln!("usage: console-give-machine STORE MACHINE CUSTOMER-NAME");
        return ExitCode::from(2);
    };
    match give(Path::new(store), machine, customer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("console-give-machine: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn give(store: &Path, machine: &str, customer: &str) -> anyhow::Result<()> {
    let mut db = Db::open(store)?;
    let page = db.customers_page(Scope::Provider, customer, 0, 200)?;
    let Some(c) = page.items.iter().find(|c| c.name == customer) else {
        anyhow::bail!("no customer is named {customer:?}");
    };
    db.set_machine_customer(machine, Some(c.id), "console-flow-test")
}
