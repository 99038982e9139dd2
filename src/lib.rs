//! Root package: owns the cross-crate tests in tests/.
