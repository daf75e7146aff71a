# infra/platform.yaml's parameters, one variable each (snake_case), with the same defaults and limits.
variable "environment_name" {
  type    = string
  default = "dev"
  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment_name)
    error_message = "environment_name must be dev, staging or prod."
  }
}

variable "data_classification" {
  description = "The data-classification tag put on the node instances and volumes"
  type        = string
  default     = "phi"
  validation {
    condition     = contains(["phi", "synthetic", "confidential"], var.data_classification)
    error_message = "data_classification must be phi, synthetic or confidential."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (standard support)"
  type        = string
  default     = "1.31"
}

variable "vpc_cidr" {
  description = "The CIDR of the VPC this module creates (ignored with existing_vpc_id); four /20 subnets are cut from it"
  type        = string
  default     = "10.10.0.0/16"
  validation {
    condition     = can(regex("^(\\d{1,3}\\.){3}\\d{1,3}/(1[6-9]|20)$", var.vpc_cidr))
    error_message = "vpc_cidr must be a /16 to /20."
  }
}

variable "existing_vpc_id" {
  description = "Use this VPC instead of creating one (with the three existing_* variables below); empty creates one"
  type        = string
  default     = ""
}

variable "existing_vpc_cidr" {
  type    = string
  default = ""
}

variable "existing_private_subnet_ids" {
  type    = list(string)
  default = []
}

variable "existing_private_route_table_ids" {
  type    = list(string)
  default = []
}

variable "enable_nat_gateway" {
  description = "A NAT gateway for egress to the internet; false: the endpoints and the ECR pull-through caches serve the workloads"
  type        = bool
  default     = false
}

variable "api_public_access_cidrs" {
  description = "Networks allowed to reach the cluster's API from outside the VPC; empty keeps the API private"
  type        = list(string)
  default     = []
}

variable "cpu_nodes" {
  type    = number
  default = 2
  validation {
    condition     = var.cpu_nodes >= 2
    error_message = "cpu_nodes must be at least 2."
  }
}

variable "gpu_nodes_min" {
  type    = number
  default = 2
  validation {
    condition     = var.gpu_nodes_min >= 0
    error_message = "gpu_nodes_min must be 0 or more."
  }
}

variable "gpu_nodes_max" {
  type    = number
  default = 8
  validation {
    condition     = var.gpu_nodes_max >= 1
    error_message = "gpu_nodes_max must be at least 1."
  }
}

variable "log_retention_days" {
  type    = number
  default = 30
}
