//! The algorithm: where the learner keeps what actors send ([`replay`]),
//! the losses ([`loss`]) and optimiser ([`optim`]) of a learner step ([`learner`], with
//! `learner_loop`), the actors ([`actor`], with `actor_loop`), the bandit's expected-gradient
//! flow ([`exact`]) and the behaviour-cloning warm start ([`warmstart`]).
pub mod actor;
pub mod exact;
pub mod learner;
pub mod loss;
pub mod optim;
pub mod replay;
pub mod warmstart;
