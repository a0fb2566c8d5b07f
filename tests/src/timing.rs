//! User enumeration by timing, measured from outside the way an attacker would: sign-ins with a
//! wrong password for existing users and sign-ins for users that do not exist, interleaved at
//! random, timed at the client.
//!
//! The **rank statistic** is the probability that a wrong-password sign-in takes longer than
//! an unknown-user one (ties count half): 0.5 means the two cannot be told apart by time.

use std::time::{Duration, Instant};

use passage_proto::v1::{SignInRequest, gateway_client::GatewayClient};
use tonic::transport::Channel;

use crate::{TestUser, cluster::CLIENT_ID, slapd::DOMAIN};

/// What one measurement found.
#[derive(Debug, Clone)]
pub struct EnumerationTiming {
    /// Latencies of wrong-password sign-ins for existing users, sorted.
    pub wrong_password: Vec<Duration>,
    /// Latencies of sign-ins for users that do not exist, sorted.
    pub unknown_user: Vec<Duration>,
}

impl EnumerationTiming {
    /// P(wrong-password latency > unknown-user latency), ties counting half.
    pub fn rank_statistic(&self) -> f64 {
        rank_statistic(&self.wrong_password, &self.unknown_user)
    }

    /// `p`-quantile (0..=1) of sorted `samples`.
    pub fn quantile(samples: &[Duration], p: f64) -> Duration {
        if samples.is_empty() {
            return Duration::ZERO;
        }
        samples[((samples.len() as f64 - 1.0) * p).round() as usize]
    }

    /// One line: p10/p50/p90 of each kind and the rank statistic.
    pub fn summary(&self) -> String {
        let ms = |samples: &[Duration], p| Self::quantile(samples, p).as_secs_f64() * 1e3;
        format!(
            "wrong password p10/p50/p90 {:.2} / {:.2} / {:.2} ms; unknown user {:.2} / {:.2} / {:.2} ms; \
             P(wrong > unknown) = {:.3} over {} + {} samples",
            ms(&self.wrong_password, 0.1),
            ms(&self.wrong_password, 0.5),
            ms(&self.wrong_password, 0.9),
            ms(&self.unknown_user, 0.1),
            ms(&self.unknown_user, 0.5),
            ms(&self.unknown_user, 0.9),
            self.rank_statistic(),
            self.wrong_password.len(),
            self.unknown_user.len(),
        )
    }
}

/// P(a > b) + ½ P(a = b) for independent draws from `a` and `b` (both sorted).
pub fn rank_statistic(a: &[Duration], b: &[Duration]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.5;
    }
    let mut score = 0.0;
    for x in a {
        let below = b.partition_point(|y| y < x);
        let equal = b[below..].partition_point(|y| y == x);
        score += below as f64 + equal as f64 / 2.0;
    }
    score / (a.len() * b.len()) as f64
}

/// A random permutation of `items` (Fisher–Yates with the system's random source).
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).expect("random source");
        let j = (u64::from_le_bytes(bytes) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Signs in once per attempt, one at a time: each user in `users` twice with a wrong password
/// (twice at most, so the directory's own lockout never answers) and as many unknown users,
/// interleaved at random. Every answer must be a refusal.
pub async fn measure(client: &GatewayClient<Channel>, users: &[TestUser]) -> EnumerationTiming {
    enum Attempt {
        Wrong(String, usize),
        Unknown(String, usize),
    }
    let mut attempts = Vec::new();
    for (n, user) in users.iter().enumerate() {
        for round in 0..2 {
            attempts.push(Attempt::Wrong(user.upn.clone(), round));
            attempts.push(Attempt::Unknown(
                format!("nobody-{n}-{round}@{DOMAIN}"),
                round,
            ));
        }
    }
    shuffle(&mut attempts);
    let mut timing = EnumerationTiming {
        wrong_password: Vec::new(),
        unknown_user: Vec::new(),
    };
    for attempt in attempts {
        // A different wrong password each round: a repeated one is answered from the agent's
        // memory without a bind, for known and unknown users alike.
        let (username, round) = match &attempt {
            Attempt::Wrong(name, round) | Attempt::Unknown(name, round) => (name.clone(), *round),
        };
        let started = Instant::now();
        let result = client
            .clone()
            .sign_in(SignInRequest {
                username,
                password: format!("Not-The-Password-{round}!"),
                client_id: CLIENT_ID.into(),
                client_ip: "203.0.113.9".into(),
                offline_access: false,
            })
            .await;
        let took = started.elapsed();
        assert!(result.is_err(), "a wrong password signed someone in");
        match attempt {
            Attempt::Wrong(..) => timing.wrong_password.push(took),
            Attempt::Unknown(..) => timing.unknown_user.push(took),
        }
    }
    timing.wrong_password.sort();
    timing.unknown_user.sort();
    timing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn the_rank_statistic_tells_slower_from_faster_and_equal() {
        assert_eq!(rank_statistic(&ms(&[5, 6]), &ms(&[1, 2])), 1.0);
        assert_eq!(rank_statistic(&ms(&[1, 2]), &ms(&[5, 6])), 0.0);
        assert_eq!(rank_statistic(&ms(&[3, 3]), &ms(&[3, 3])), 0.5);
        assert_eq!(rank_statistic(&ms(&[1, 3]), &ms(&[2, 4])), 0.25);
    }
}
