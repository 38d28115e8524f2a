//! The API on Lambda, behind API Gateway's HTTP API.

use clap::Parser;
use ocr_api::config::{ApiArgs, DbArgs, ResourceArgs};
use ocr_api::startup::Services;

#[derive(Parser, Debug)]
#[command(version, about = "ocr-fleet API (AWS Lambda)")]
struct Config {
    #[command(flatten)]
    resources: ResourceArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    ocr_api::telemetry::init();
    let config = Config::parse();
    let services = Services::new(&config.resources, &config.db).await?;
    let app = ocr_api::routes::router(services.app_state(&config.api)?);
    lambda_http::run(app).await
}
