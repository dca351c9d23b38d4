//! Integration tests: the real application on port 0, one database per test.
//! `TEST_DATABASE_URL` set: every test runs on PostgreSQL; unset: on SQLite.

mod accounts;
mod api_keys;
mod checkout;
mod cli;
mod connections;
mod contract;
mod cors;
mod credits;
mod durability;
mod email;
mod email_messages;
mod errors;
mod faults;
mod fulfilment;
mod group_commit;
mod hardening;
mod health;
mod healthcheck;
mod helpers;
mod instances;
mod licences;
mod metrics;
mod network;
mod nowpayments;
mod openapi;
mod outbound_webhooks;
mod ratelimits;
mod read_view;
mod receipts;
mod refunds_disputes;
mod security_headers;
mod sign_in_notice;
mod storage;
mod tls;
mod webhooks;
