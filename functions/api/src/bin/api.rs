//! The API on Lambda, behind API Gateway's HTTP API.

use clap::Parser;
use ocr_api::config::ProducerArgs;
use ocr_api::startup::Services;

#[derive(Parser, Debug)]
#[command(version, about = "ocr-fleet API (AWS Lambda)")]
struct Config {
    #[command(flatten)]
    producer: ProducerArgs,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    ocr_aws::process::install_crypto_provider();
    ocr_api::telemetry::init();
    let config = Config::parse();
    let ProducerArgs { resources, db, api } = &config.producer;
    let services = Services::new(resources, db).await?;
    let app = ocr_api::routes::router(services.app_state(api).await?);
    lambda_http::run(app).await
}
