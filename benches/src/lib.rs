//! shardlog's measuring side: shared code of the criterion benches and the
//! measurement binaries.

pub mod crosscore;
pub mod load;
