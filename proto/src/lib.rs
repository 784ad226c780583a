//! Lifeline's wire protocol (see `proto/lifeline.proto`).

pub mod client;
pub mod control_client;

/// Generated protobuf messages and gRPC client/server for `lifeline.v1`.
pub mod v1 {
    tonic::include_proto!("lifeline.v1");
}

/// The agent's local control service (`proto/control.proto`).
pub mod control {
    pub mod v1 {
        tonic::include_proto!("lifeline.control.v1");
    }
}

/// Metadata header naming the machine an agent speaks for.
pub const MACHINE_HEADER: &str = "x-lifeline-machine";

/// Metadata header of a Replicate stream with the agent's queue id (16 hex
/// digits): the receiver remembers how far it applied each queue.
pub const QUEUE_HEADER: &str = "x-lifeline-queue";

/// Largest data chunk the agent puts in one `Chunk`; keeps messages well under
/// gRPC's default 4 MiB limit.
pub const MAX_CHUNK: usize = 1 << 20;

/// Message size limit both ends configure, with room for a batch of chunks.
pub const MAX_MESSAGE: usize = 64 << 20;

/// HTTP/2 flow-control windows both ends configure for replication streams
/// (the protocol's 64 KiB default stalls bulk copies).
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
