//! Simulation tests of the scheduler: one test binary, a simulator module and the scenario
//! groups that drive it. Simulation is the point of a sans-IO scheduler: thousands of servers,
//! exact timing and scripted faults, all on virtual time and deterministic.

mod edge;
mod followers;
mod giving_up;
mod props;
mod scenarios;
mod silence;
mod timing;
mod world;
