//! The dashboard in a real browser: headless Chromium driven over WebDriver.

mod dashboard;
mod driver;
