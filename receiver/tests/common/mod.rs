//! What the receiver's integration tests share: a request carrying a
//! credential, and a machine registered in a store.

use lifeline_core::credential::{Credential, MachineName};
use tonic::Request;

/// `msg` with `authorization: Bearer TOKEN`.
pub fn with_credential<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// Registers machine `name` in the store at `store`; its credential.
pub fn register(store: &std::path::Path, name: &str) -> Credential {
    let cred = Credential::generate(name);
    lifeline_store::Db::open(store)
        .unwrap()
        .add_machine(&MachineName::new(name).unwrap(), &cred.secret_hash(), "")
        .unwrap();
    cred
}
