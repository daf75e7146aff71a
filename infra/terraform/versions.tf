# infra/platform.yaml as a Terraform module, for teams whose platform is Terraform (README, "Deploying to AWS": which
# to choose when). The same resources and key properties; tests/infra/test_terraform.py holds the two equal.
terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
}

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zones are used, as infra/platform.yaml's !Select [0 or 1, !GetAZs]; the subnets' zones are fixed once created
  state = "available"
}

locals {
  create_vpc = var.existing_vpc_id == ""
  create_nat = local.create_vpc && var.enable_nat_gateway
  public_api = length(var.api_public_access_cidrs) > 0
  region     = data.aws_region.current.name
  account    = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  name       = "radstream-${var.environment_name}"

  vpc_id             = local.create_vpc ? aws_vpc.vpc[0].id : var.existing_vpc_id
  vpc_cidr           = local.create_vpc ? var.vpc_cidr : var.existing_vpc_cidr
  private_subnet_ids = local.create_vpc ? [aws_subnet.subnet["private_subnet_a"].id, aws_subnet.subnet["private_subnet_b"].id] : var.existing_private_subnet_ids
  private_route_ids  = local.create_vpc ? [aws_route_table.route_table["private"].id] : var.existing_private_route_table_ids
  cost_tags = {
    project               = "radstream"
    environment           = var.environment_name
    "data-classification" = var.data_classification
  }
}
