//! Shard routing (DESIGN 1.1): FNV-1a 64 over the tenant id's bytes, one 0xFF byte, then the 16
//! raw trace-id bytes (or, for logs without a trace id and for metric points, the service name's
//! bytes), modulo the shard count.
//!
//! This hash is part of the on-disk format: it decides which file a trace lives in, so it is
//! seedless and stable across restarts and Rust releases (no `std::hash`), and a unit test pins
//! known values. The 0xFF separator cannot occur in UTF-8, so ("ab", "c") and ("a", "bc") differ.

use super::batch::TraceId;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 state.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl Fnv1a {
    #[inline]
    pub fn write(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }
    #[inline]
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The 64-bit routing key of (tenant, trace id).
pub fn trace_key(tenant: &str, trace_id: &TraceId) -> u64 {
    Fnv1a::default().write(tenant.as_bytes()).write(&[0xff]).write(&trace_id.0).finish()
}

/// The 64-bit routing key of (tenant, service name).
pub fn service_key(tenant: &str, service: &str) -> u64 {
    Fnv1a::default().write(tenant.as_bytes()).write(&[0xff]).write(service.as_bytes()).finish()
}

/// Shard of a key among `shards` (≥ 1).
#[inline]
pub fn shard_of(key: u64, shards: usize) -> usize {
    (key % shards.max(1) as u64) as usize
}

/// Shard of a trace.
pub fn shard_for_trace(tenant: &str, trace_id: &TraceId, shards: usize) -> usize {
    shard_of(trace_key(tenant, trace_id), shards)
}

/// Shard of a log without trace id, or of a metric point.
pub fn shard_for_service(tenant: &str, service: &str, shards: usize) -> usize {
    shard_of(service_key(tenant, service), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // Test vectors of the FNV reference (draft-eastlake-fnv, FNV-1a 64).
        assert_eq!(Fnv1a::default().write(b"").finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv1a::default().write(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(Fnv1a::default().write(b"foobar").finish(), 0x85944171f73967e8);
    }

    #[test]
    fn routing_values_are_pinned() {
        // These values are part of the on-disk format: changing them moves traces between files.
        let trace = TraceId([
            0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c,
        ]);
        assert_eq!(trace_key("default", &trace), PINNED_TRACE_KEY);
        assert_eq!(service_key("default", "checkout"), PINNED_SERVICE_KEY);
        assert_eq!(shard_for_trace("default", &trace, 4), 1);
        assert_eq!(shard_for_trace("default", &TraceId([0; 16]), 1), 0);
        // The separator keeps tenant and id apart.
        assert_ne!(service_key("ab", "c"), service_key("a", "bc"));
    }

    const PINNED_TRACE_KEY: u64 = 0x0205_369b_6eee_42b9; // shard 1 of 4
    const PINNED_SERVICE_KEY: u64 = 0x3fa0_20ec_0289_970f;

    #[test]
    fn same_tenant_and_trace_always_route_to_the_same_shard() {
        for shards in 1..=10 {
            for i in 0u8..=255 {
                let t = TraceId([i; 16]);
                let s = shard_for_trace("tenant-a", &t, shards);
                assert!(s < shards);
                assert_eq!(s, shard_for_trace("tenant-a", &t, shards));
            }
        }
    }
}
